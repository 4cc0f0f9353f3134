"""`framework.run(TrainerClass)`: the absl entry point of a research script.

    python experiments/digits.py --config=configs/digits.py:smoke \
        --config.batch_size=128 --workdir=runs/digits --mode=train_and_eval

Modes: `train` (fit, no evaluation), `train_and_eval` (fit, evaluating every
`config.eval_every_epochs`), `eval` (evaluate once).
"""

from __future__ import annotations

import sys
from typing import Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from framework import config as config_lib
from framework import logs

FLAGS = flags.FLAGS
RUN_MODES = ("train", "eval", "train_and_eval")


def _define_flags() -> None:
    if "config" in FLAGS:
        return
    config_flags.DEFINE_config_file(
        "config", None, "Config file: path.py or path.py:arg; override keys with --config.a.b=v.",
        lock_config=False,
    )
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and summaries.")
    flags.DEFINE_enum("mode", "train_and_eval", list(RUN_MODES), "What to run.")


def _override_paths(argv: Sequence[str]) -> list[str]:
    paths = []
    for arg in argv[1:]:
        if arg.startswith("--config.") and not arg.startswith("--config.="):
            paths.append(arg[len("--config."):].split("=", 1)[0])
    return paths


def _check_override(config: ml_collections.ConfigDict, path: str) -> None:
    node, walked = config, []
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            where = "config." + ".".join(walked) if walked else "config"
            raise config_lib.ConfigError(
                f"--config.{path}: {where} has no key {part!r}.{config_lib._near(part, keys)}"
            )
        node, walked = node[part], walked + [part]


def _parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's parser, with unknown config keys reported by name before any work."""
    overrides = _override_paths(argv)
    plain = [a for a in argv if not (a.startswith("--config.") and a.split("=", 1)[0][9:] in overrides)]
    try:
        FLAGS(plain)
        base = FLAGS.config
        if base is None:
            raise config_lib.ConfigError("--config is required: --config=configs/<name>.py[:variant]")
        for path in overrides:
            _check_override(base, path)
        FLAGS.unparse_flags()
        remaining = FLAGS(list(argv))
        config_lib.resolve(FLAGS.config)
    except (flags.Error, config_lib.ConfigError) as e:
        sys.stderr.write(f"FATAL {e}\n")
        sys.exit(2)
    if not FLAGS.workdir:
        sys.stderr.write("FATAL --workdir is required.\n")
        sys.exit(2)
    return remaining


def run(trainer_cls, argv: Sequence[str] | None = None) -> None:
    """Parses flags, builds `trainer_cls(config, workdir)` and runs `--mode`."""
    _define_flags()

    def main(_argv):
        trainer = trainer_cls(FLAGS.config, workdir=FLAGS.workdir)
        if FLAGS.mode == "eval":
            results = trainer.evaluate()
        else:
            history = trainer.fit(validate=FLAGS.mode == "train_and_eval")
            results = history[-1] if history else {}
        if trainer.is_chief:
            logging.info("final metrics: %s", logs.to_floats(results))
            print("Final metrics:")
            for key, value in sorted(results.items()):
                print(f"  {key:<32} {value:.6g}")

    app.run(main, argv=list(argv) if argv is not None else None, flags_parser=_parse_flags)
