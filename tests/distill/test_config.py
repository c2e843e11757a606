"""Configs: the training config's YAML, overrides and checks, and the loader they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

import hear_ced.common.config
from hear_ced.common.config import checked, from_dict, in_range, positive, to_plain
from hear_ced.distill.augment import AugmentConfig
from hear_ced.distill.config import ConfigError, load_config

RECIPES = sorted((Path(__file__).parents[2] / "distill" / "configs").glob("as*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


BASE = """
data:
  train_tsv: train.tsv
targets:
  kind: labels
"""


def test_overrides_are_parsed_as_yaml_scalars(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE),
        ["optim.lr=3e-4", "optim.epochs=7", "augment.mixup=true", "model.init=null"],
    )
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.optim.epochs == 7
    assert cfg.augment.mixup is True
    assert cfg.model.init is None


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optim.lrr=0.1", "optim.lrr"),
        ("augment.colour=1", "augment.colour"),
        ("optim.epochs=ten", "optim.epochs"),
        ("optim.epochs=2.5", "optim.epochs"),
        ("optim.adam_8bit=3", "optim.adam_8bit"),
        ("targets.kind=teacher", "targets.kind"),
        ("model.depth=true", "model.depth"),
        ("optim=3", "optim"),
    ],
)
def test_bad_keys_and_types_name_the_dotted_key(tmp_path, override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(write(tmp_path, BASE), [override])


def test_unknown_key_in_yaml_file_is_named(tmp_path):
    path = write(tmp_path, BASE + "eval:\n  keep_bets: 3\n")
    with pytest.raises(ConfigError, match=r"eval\.keep_bets"):
        load_config(path)


def test_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError, match="logits_dir"):
        load_config(write(tmp_path, BASE), ["targets.kind=logits"])
    with pytest.raises(ConfigError, match="optim.batch_size"):
        load_config(write(tmp_path, BASE), ["optim.batch_size=0"])
    with pytest.raises(ConfigError, match="model"):
        load_config(write(tmp_path, BASE), ["model.embed_dim=30", "model.num_heads=4"])
    with pytest.raises(ConfigError, match="model.variant"):
        load_config(write(tmp_path, BASE), ["model.variant=huge"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(write(tmp_path, BASE), ["optim.lr"])


def test_a_time_mask_wider_than_half_the_clip_is_refused(tmp_path):
    # The recipe's 192-frame mask fits a 10 s clip (1001 frames) but not a 2 s one (201).
    load_config(write(tmp_path, BASE), ["data.clip_seconds=10"])
    with pytest.raises(ConfigError, match=r"^augment.time_mask_width: .*192 frames .*201 frames"):
        load_config(write(tmp_path, BASE), ["data.clip_seconds=2"])
    with pytest.raises(ConfigError, match=r"data.clip_seconds\); use at most 100"):
        load_config(write(tmp_path, BASE), ["data.clip_seconds=2"])
    load_config(write(tmp_path, BASE), ["data.clip_seconds=2", "augment.time_mask_width=100"])
    load_config(write(tmp_path, BASE), ["data.clip_seconds=2", "augment.spec=false"])


def test_custom_sizes_override_the_variant(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["model.variant=tiny", "model.depth=2"])
    ced = cfg.model.ced_config()
    assert (ced.embed_dim, ced.depth, ced.num_heads) == (192, 2, 3)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    cfg = load_config(path)
    expected_lr = 1e-3 if cfg.model.variant in ("tiny", "mini") else 3e-4
    assert cfg.optim.lr == pytest.approx(expected_lr)
    assert cfg.optim.min_lr_ratio == pytest.approx(0.1)
    assert cfg.targets.kind == "logits"
    # The original optimizer: bitsandbytes' 8-bit Adam, no weight decay, no silent fallback.
    assert cfg.optim.adam_8bit and cfg.optim.optimizer == "adam"
    assert cfg.optim.weight_decay == 0.0 and not cfg.optim.allow_fallback
    assert len(RECIPES) == 8
    if path.name.startswith("as20k"):
        assert (cfg.optim.batch_size, cfg.optim.warmup_steps, cfg.optim.epochs) == (32, 5000, 300)
        assert cfg.augment.mixup
    if path.name.startswith("as2m"):
        assert (cfg.optim.batch_size, cfg.optim.warmup_steps) == (128, 62500)
    # The recipes' bf16 on GPU, float32 on CPU; the engine's other settings off.
    assert cfg.precision == "auto"
    assert (cfg.optim.accumulate, cfg.optim.clip_grad_norm) == (1, 0.0)


def test_accumulation_must_split_the_batch(tmp_path):
    with pytest.raises(ConfigError, match="optim.accumulate: batch_size 32 does not split into 3"):
        load_config(write(tmp_path, BASE), ["optim.batch_size=32", "optim.accumulate=3"])
    with pytest.raises(ConfigError, match="optim.clip_grad_norm"):
        load_config(write(tmp_path, BASE), ["optim.clip_grad_norm=-1"])


# --------------------------------------------------------------------------
# The loader of hear_ced.common.config on a config of every supported field kind.


@dataclass(frozen=True)
class _Section:
    rate: float = 0.5
    sizes: tuple[tuple[int, int, int], ...] = ((192, 12, 3),)
    kind: Literal["a", "b"] = "a"
    limit: int | None = None

    def validate(self) -> None:
        in_range(self, "rate", 0, 1)


@dataclass
class _Plan:
    section: _Section = field(default_factory=_Section)
    optional: _Section | None = None
    names: list[str] = field(default_factory=list)
    seeds: int = 2

    def validate(self) -> None:
        positive(self, "seeds")


def test_loader_builds_nested_tuples_literals_and_optionals():
    plan = from_dict(
        _Plan,
        {
            "section": {"rate": 1, "sizes": [[256, 12, 4], [384, 12, 6]], "kind": "b"},
            "optional": {"limit": 3},
            "names": ["x"],
        },
    )
    assert plan.section == _Section(1.0, ((256, 12, 4), (384, 12, 6)), "b", None)
    assert plan.optional == _Section(limit=3) and plan.names == ["x"]
    assert isinstance(plan.section.rate, float) and to_plain(plan)["section"]["sizes"][1] == [
        384,
        12,
        6,
    ]
    assert from_dict(_Plan, to_plain(plan)) == plan  # a stored config loads back as it was
    loaded = hear_ced.common.config.load_config(
        _Plan, None, ["optional=null", "section.limit=4", "section.rate=3e-1"]
    )
    assert loaded.section.limit == 4 and loaded.optional is None
    assert loaded.section.rate == 0.3  # YAML 1.2's float, not YAML 1.1's string


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"section": {"sizes": [[1, 2]]}}, r"section.sizes\[0\]: too few values"),
        ({"section": {"sizes": [[1, 2, "x"]]}}, r"section.sizes\[0\]\[2\]: .*integer"),
        ({"section": {"kind": "c"}}, "section.kind: .*'a' or 'b'"),
        ({"section": {"rate": 2}}, r"section.rate: must be in \[0, 1\], got 2"),
        ({"optional": {"rate": -1}}, r"optional.rate: must be in \[0, 1\]"),
        ({"optional": {"rte": 1}}, r"unknown config key\(s\): optional.rte \(known: rate, "),
        ({"seeds": 0}, "seeds: must be positive, got 0"),
        ({"seeds": True}, "seeds: .*integer, got bool True"),
        ({"names": "x"}, "names: input should be a list, got str"),
        ({"section": 3}, "section: input should be a mapping, got int 3"),
        ({"section": {"rate": "fast"}}, "section.rate: .*number, got str 'fast'"),
    ],
)
def test_loader_names_the_dotted_key_of_every_kind_of_problem(tree, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(_Plan, tree)


def test_configs_built_in_code_are_checked_like_loaded_ones():
    with pytest.raises(ConfigError, match="time_mask_width: .*integer, got str '24'"):
        AugmentConfig(time_mask_width="24")
    with pytest.raises(ConfigError, match=r"mixup_p: must be in \[0, 1\], got 2"):
        AugmentConfig(mixup_p=2)
    with pytest.raises(ConfigError, match=r"augment.mixup_p: must be in \[0, 1\]"):
        from_dict(AugmentConfig, {"mixup_p": 2}, "augment")
    assert checked(AugmentConfig()) == AugmentConfig()


@pytest.mark.parametrize("doc", ["README.md", "docs/distill.md"])
def test_the_documented_recipe_writes_what_the_shipped_config_reads(doc):
    """prepare's output, save-logits' store and augmentation agree with as20k_mini.yaml."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).parents[2]
    text = (root / doc).read_text().replace("\\\n", " ")
    config = load_config(root / "distill" / "configs" / "as20k_mini.yaml")
    commands = [shlex.split(line.split("#")[0]) for line in text.splitlines()
                if line.startswith("ced-distill ")]  # fmt: skip
    prepared = {
        f"{c[c.index('--out') + 1]}/labels/{Path(c[2]).stem}.tsv"
        for c in commands
        if c[1] == "prepare"
    }
    assert {config.data.train_tsv, config.data.eval_tsv} <= prepared
    # The first save-logits is the recipe's (later ones show other options).
    save = next(c for c in commands if c[1] == "save-logits")
    assert save[save.index("--train-tsv") + 1] == config.data.train_tsv
    assert save[save.index("--out") + 1] == config.targets.logits_dir
    assert ("--mixup" in save) == config.augment.mixup
    k, epochs = save[save.index("--k") + 1], save[save.index("--epochs") + 1]
    assert re.search(rf"_k{k}_e{epochs}$", config.targets.logits_dir)
    assert any(c[1:3] == ["train", "distill/configs/as20k_mini.yaml"] for c in commands)
