# ftdrift: how full fine-tuning and LoRA change a language model's representations.
# Rules are declarative; the logic lives in the ftdrift package (src/ftdrift).
import os

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless config files are given with --configfile: those then stand
# alone (e.g. config/study.yaml), so nothing of the default leaks into the study.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config/config.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/representations.smk"
include: "rules/finetune.smk"
include: "rules/drift.smk"
include: "rules/pairs.smk"
include: "rules/weights.smk"
include: "rules/intruders.smk"
include: "rules/checks.smk"
include: "rules/baselines.smk"
include: "rules/forgetting.smk"
include: "rules/analysis.smk"
include: "rules/deployment.smk"
include: "rules/report.smk"  # after every rule that writes results/tables/*


# Preflight (src/ftdrift/preflight.py): on a cluster executor, check the model, the data, the
# profile's settings and the container image once, before any job is submitted, and stop with one
# message listing every problem. Snakemake runs onstart only in the main process (jobs get
# --no-hooks) and not for dry runs. FTDRIFT_PREFLIGHT=0 skips it.
onstart:
    if not workflow.local_exec:
        from ftdrift import preflight as ftpreflight

        try:
            ftpreflight.run_before_jobs(CONFIG, workflow.executor_plugin.name)
        except ftpreflight.PreflightError as err:
            raise WorkflowError(str(err)) from None


rule all:
    default_target: True
    input:
        all_targets(),
        REPORT_TARGETS,
