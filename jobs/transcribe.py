"""Ray job entry point: the same run as `bulkscribe run`, taking the same arguments.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/transcribe.py s3://bucket/audio --output s3://bucket/out

Inside a Ray job $RAY_ADDRESS is set, so the run joins that cluster.
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
