"""The loss benchmark runs (short mode, as in CI); no timing assertions."""

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
)

import bench_losses  # noqa: E402


def test_bench_losses_short_mode_runs_every_group(tmp_path, capsys):
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    results = bench_losses.main(["--short", "--write", "--markdown", str(markdown)])
    assert {"Dice", "Tversky", "Triplet batch_hard", "Triplet batch_all", "RankNet", "L2 regularizer"} <= set(
        results
    )
    for group, contestants in results.items():
        assert any(c.ours for c in contestants) or group.startswith("norm")
        assert all(c.wall and c.cpu and min(c.wall) > 0 for c in contestants)
    assert "| Dice | Dice [tf.function] **(ours)** |" in capsys.readouterr().out
    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n\n## Other\n\nkept\n") and "## Loss benchmarks" in text
    bench_losses.main(["--short", "--write", "--markdown", str(markdown), "--only", "Dice"])
    assert markdown.read_text().count("## Loss benchmarks") == 1  # refreshed in place
