"""llama2bin: stream LLaMA-family checkpoints into llama2.c .bin files and prove them right.

Data flows one way: sources (lazy name -> tensor maps) -> formats (writers built from one
layout description) -> reader -> verification -> reports. The CLI and the Snakemake rules
are thin layers over these modules.
"""

__version__ = "0.1.0"
