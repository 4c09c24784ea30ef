# placeholder: filled by the baselines work
