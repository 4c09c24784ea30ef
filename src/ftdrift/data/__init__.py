"""Task data: reading the original files (or the hub), the splits, tokenisation into features,
and extractive-QA post-processing."""
