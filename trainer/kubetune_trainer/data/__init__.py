"""Training data: reading a split (sources), mapping rows to records of the task (records), the
quality report and gate (quality), augmentation, tokenisation (preparation), and the project's own
synthetic datasets (synthetic)."""
