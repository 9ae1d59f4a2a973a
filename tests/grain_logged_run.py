"""`jaxcnn ARGS` with every training record the Grain feed reads logged, for
tests/test_grain_processes.py: one line "rows_start rows_stop step epoch example" per record, appended
to $JAXCNN_TEST_READ_LOG by whichever process reads it (the main one or a Grain worker: the logging
class is defined here, in `__main__`, so Grain's cloudpickle sends it to the workers by value)."""

import dataclasses
import os
import sys

from jaxcnn.data import grain_feed, records


@dataclasses.dataclass(frozen=True)
class LoggedTrainRecords(records.TrainRecords):
    def __call__(self, k):
        record = records.TrainRecords.__call__(self, k)
        step, epoch, example = records.record_index(int(k), self.layout, self.seed)
        with open(os.environ["JAXCNN_TEST_READ_LOG"], "a") as log:  # one short append: whole lines
            log.write(f"{self.layout.rows[0]} {self.layout.rows[1]} {step} {epoch} {example}\n")
        return record


if __name__ == "__main__":
    grain_feed.TrainRecords = LoggedTrainRecords
    from jaxcnn import cli

    sys.exit(cli.main(sys.argv[1:]))
