"""What the study will cost, before it runs: `python -m ftdrift.estimate --configfile config/study.yaml
--profile gcp-gpu` (README 'What the study will cost').

Modules, one job each:
  tokens    the data really held, carved and tokenised as the workflow does; padded tokens of the
            batches the training job forms (seeded length-grouped sampler, dynamic padding)
  hardware  the price/hardware table (config/prices.yaml), the profile's machines and concurrency,
            the throughput figure (published peak x MFU, or bench/gpu_mfu.py's measurement)
  costs     FLOPs, seconds and bytes per job (a method's FLOPs per token: ftdrift.study.resources)
  dag       jobs per rule as Snakemake plans them (a dry run)
  plan      all of it put together into an Estimate
  render    the Estimate as aligned tables
"""
