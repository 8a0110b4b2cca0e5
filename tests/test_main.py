"""The command line: a mistyped config key fails naming it; multi-host flags go together."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _main(*args: str, tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bertjax.main",
            "--config=configs/bert_tiny_pretrain.py",
            f"--workdir={tmp_path / 'run'}",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_mistyped_config_key_fails_naming_it(tmp_path):
    result = _main("--config.optim.learnin_rate=0.1", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "unknown config key 'optim.learnin_rate'" in result.stderr, result.stderr[-2000:]
    assert "did you mean 'optim.learning_rate'" in result.stderr
    assert "Traceback" not in result.stderr  # one clear line, not a stack
    assert not (tmp_path / "run").exists()  # nothing started

    result = _main("--config.totl_steps=5", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "unknown config key 'totl_steps'" in result.stderr
    assert "did you mean 'total_steps'" in result.stderr


def test_multi_host_flags_go_together(tmp_path):
    result = _main("--num_processes=2", tmp_path=tmp_path)
    assert result.returncode != 0
    assert "--coordinator_address, --num_processes and --process_id go together" in result.stderr
