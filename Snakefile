# ftdrift: how full fine-tuning and LoRA change a language model's representations.
# Rules are declarative; the logic lives in the ftdrift package (src/ftdrift).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/representations.smk"
include: "rules/finetune.smk"
include: "rules/drift.smk"
include: "rules/analysis.smk"


rule all:
    input:
        all_targets(),
    default_target: True
