import sys

from .job_client import forward

# A local Snakemake job with the job server running: the server's worker runs the command
# (job_client.py); otherwise, and always outside Snakemake, it runs here.
code = forward(sys.argv[1:])
if code is None:
    from .cli import main

    code = main()
sys.exit(code)
