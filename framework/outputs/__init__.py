"""What a run writes and prints: metrics.jsonl, TensorBoard, progress, console, recorded config, HParams.

Owns: `run_log` (host sums, the jsonl/TensorBoard writer, the progress display), `console` (what a
run prints), `recorded_config` (the config a run records in its workdir), `hparams` (TensorBoard
HParams summaries; needs no TensorFlow).

May import: config, optim (`keras_internals`, for the recorded optimizer), and the shared leaves.
"""
