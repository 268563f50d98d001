"""Ray job entry point: the same run as `bulkscribe run`, taking the same arguments.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/transcribe.py s3://bucket/audio --output s3://bucket/out

Inside a Ray job $RAY_ADDRESS is set, so the run joins that cluster.
"""

import sys

from pipeline.cli import EXIT_COMPLETE, EXIT_FILES_FAILED, main

if __name__ == "__main__":
    code = main(["run", *sys.argv[1:]])
    # Ray marks a job FAILED on any other exit code than 0; a job that committed every
    # unit did its work, and its summary (in the job's logs) counts the failed files.
    sys.exit(EXIT_COMPLETE if code == EXIT_FILES_FAILED else code)
