"""`make demo DATA=...`: the whole loop on a competition folder, through tools/demo.py."""
import json

from tools.demo import main

from simsearch.demo_data import build_demo_competition


def test_demo_loop_on_a_competition_folder(tmp_path, monkeypatch, capsys):
    comp = build_demo_competition(tmp_path / "comp", seed=1, views_per_item=3, crop_grid=1)["out_dir"]
    monkeypatch.chdir(tmp_path)  # the demo writes submissions/ relative to the working folder
    assert main(["--data", str(comp), "--work", str(tmp_path / "work"), "--epochs", "1",
                 "train.batch_p=4", "train.batch_k=2", "data.val_fraction=0.0", "data.num_workers=0",
                 "data.image_size=64", "infer.batch_size=16"]) == 0
    out = capsys.readouterr().out
    sub = json.loads((tmp_path / "submissions" / "demo_comp.json").read_text())
    gt = json.loads((comp / "test" / "ground_truth.json").read_text())
    assert sorted(sub) == sorted(gt)
    assert "leaderboard" in out and "| all |" in out
    assert (tmp_path / "submissions" / "leaderboard.csv").is_file()
    assert (tmp_path / "work" / "ablation.md").is_file()
