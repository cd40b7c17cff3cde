"""One Python SDK worker, started by the pool: imports TF and the TFX libraries, then serves the runner it is given."""

from __future__ import annotations

import sys


def main(argv) -> int:
    # Before the runner's first bundle, not during it: the runner gives a worker's data channel
    # 3 minutes to open, and importing these while decoding that bundle took longer on 2 loaded cores.
    import tensorflow  # noqa: F401
    import tensorflow_data_validation  # noqa: F401
    import tensorflow_model_analysis  # noqa: F401
    import tensorflow_transform.beam  # noqa: F401
    from apache_beam.runners.worker.sdk_worker import SdkHarness

    if len(argv) > 2:
        control_endpoint, worker_id = argv[1], argv[2]
    else:
        # A spare: imported ahead of any job, it waits for the pool to hand it a runner's endpoint.
        line = sys.stdin.readline().split()
        if len(line) != 2:
            return 0  # the pool closed without using it
        control_endpoint, worker_id = line
    SdkHarness(control_endpoint, worker_id=worker_id, state_cache_size=0, data_buffer_time_limit_ms=-1).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
