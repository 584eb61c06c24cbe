"""The drivers that read and write a workdir: training, sampling,
evaluation and classifier training."""
