"""File names of an IRP run folder: defined here once, read through ``IRPRecord`` everywhere else.

```
{output_dir}/irp/                 the run folder (RUN_DIR inside a Trainer's output_dir)
  irp_run.json                    configuration, identity, schedule, per-cycle history; written last (= complete)
  irp_record.safetensors          cycle_pruned/<name>, w0/<name>, g0/<name>, input_std/<name>
  final_mask/                     MaskSet of the last cycle (mask_config.json + masks.safetensors)
  cycles.csv, cycles.md, cycles.png   the lottery-ticket curve
  scores/, scores.parquet         the surviving-score dataset (with its card)
```
"""

RUN_DIR = "irp"
RUN_FILE = "irp_run.json"
RECORD_FILE = "irp_record.safetensors"
FINAL_MASK_DIR = "final_mask"
RECORD_FORMAT_VERSION = 1
