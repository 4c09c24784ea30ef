# placeholder: filled by the deployment work
