"""The examples' command lines refuse bad values with an argparse error (exit status 2, the flag
named) before any work starts. In-process: parse_args only, so each case takes milliseconds."""
import pytest
from conftest import import_example

SCRIPTS = ["alexnet_imagenet", "init_study", "prelu_study", "relu_vs_tanh", "resnet_cifar"]


# flag -> bad values, for the flags each script has (checked against the script's --help)
BAD = {
    "--seed": ["-1", "1.5", "x", str(2 ** 63)],
    "--epochs": ["0", "-3", "2.5"],
    "--iters": ["0", "-1"],
    "--batch-size": ["0", "-8", "nan"],
    "--lr": ["nan", "inf", "0", "-0.1", "abc"],
    "--lr-relu": ["nan", "-1"],
    "--lrs": ["nan"],
    "--width": ["0", "-0.5", "inf"],
    "--input-size": ["0", "-224"],
    "--dropout": ["1", "1.5", "-0.1", "nan"],
    "--n-per-class": ["0", "-1"],
    "--workers": ["-1"],
    "--window": ["0"],
    "--target": ["0", "1", "nan"],
    "--depths": ["21", "0", "-4"],
}


def _flags(mod, capsys):
    """The flags the script's --help lists."""
    import re
    with pytest.raises(SystemExit):
        mod.parse_args(["--help"])
    return set(re.findall(r"(--[a-z][a-z-]*)", capsys.readouterr().out))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_values_are_argparse_errors_naming_the_flag(script, capsys, tmp_path):
    mod = import_example(script)
    flags = _flags(mod, capsys)
    assert {"--seed", "--lr" if script != "relu_vs_tanh" else "--lr-relu"} <= flags
    tried = 0
    for flag, values in BAD.items():
        if flag not in flags:
            continue
        for v in values:
            with pytest.raises(SystemExit) as info:
                mod.parse_args([flag, v, "--out", str(tmp_path)])
            assert info.value.code == 2, (flag, v)
            err = capsys.readouterr().err
            assert f"argument {flag}" in err and repr(v) in err, (flag, v, err)
            tried += 1
    assert tried >= 12, tried  # --seed, --lr, --batch-size and more on every script


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_data_folder_and_out_file_are_named(script, capsys, tmp_path):
    mod = import_example(script)
    missing = str(tmp_path / "no-such-folder")
    with pytest.raises(SystemExit) as info:
        mod.parse_args(["--data", missing])
    assert info.value.code == 2
    assert "argument --data" in capsys.readouterr().err
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    for flag in ("--data", "--out"):
        with pytest.raises(SystemExit):
            mod.parse_args([flag, str(a_file)])
        assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("script", SCRIPTS)
def test_good_values_parse(script, tmp_path):
    mod = import_example(script)
    args = mod.parse_args(["--seed", "7", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert args.seed == 7 and args.data == str(tmp_path)


def test_typed_values_come_back_typed():
    am = import_example("alexnet_imagenet")
    a = am.parse_args(["--epochs", "3", "--lr", "0.01", "--dropout", "0", "--workers", "0"])
    assert (a.epochs, a.lr, a.dropout, a.workers) == (3, 0.01, 0.0, 0)
    args = import_example("resnet_cifar").parse_args(["--depths", "20", "110"])
    assert args.depths == [20, 110]


def test_alexnet_crop_larger_than_image_is_refused(capsys):
    with pytest.raises(SystemExit):
        import_example("alexnet_imagenet").parse_args(["--input-size", "100",
                                                       "--image-size", "64"])
    assert "--input-size 100 is larger than --image-size 64" in capsys.readouterr().err
