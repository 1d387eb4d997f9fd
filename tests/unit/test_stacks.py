"""Stacks: the choice of the stack a job builds on, the labels that say what a stack holds,
and the wheelhouse plan.  Pure: no engine, no network."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import pytest

from bake.lock.format import PythonLock, Target
from bake.stacks.choice import Held, Need, Stack, Wheel, choose, preferred_pins
from bake.stacks.labels import (
    MAX_STACK_LABEL,
    PARENT,
    STACK,
    VARIANT,
    encode_held,
    parent_of,
    read_stack,
    stack_labels,
)
from bake.stacks.wheelhouse import (
    CACHE_ID,
    INSTALL_MOUNT,
    MOUNT,
    fetch_list,
    install_requirements,
    valid_wheel,
)
from tests.unit.helpers import TARGET, fake_dist

BASE = "sha256:" + "b" * 64
OTHER_BASE = "sha256:" + "c" * 64
RECIPE = "sha256:" + "d" * 64
PY = "cpython 3.11.2 cp311 x86_64 glibc 2.36"


def wheel(name: str, version: str = "1.0", tag: str = "") -> Wheel:
    sha = hashlib.sha256(f"{name}-{version}{tag}".encode()).hexdigest()
    return Wheel(name, version, f"{name}-{version}-py3-none-any.whl", sha,
                 f"https://files.example/{name}-{version}-py3-none-any.whl")


TORCH, NUMPY, TABULATE, SIX, PANDAS = (wheel(n) for n in ("torch", "numpy", "tabulate", "six",
                                                          "pandas"))


def need(*wheels: Wheel, base: str = BASE, recipe: str = RECIPE, python: str = PY) -> Need:
    return Need(base, recipe, python, tuple(sorted(wheels, key=lambda w: w.name)))


def stack(*wheels: Wheel, variant: str = "python/v", base: str = BASE, recipe: str = RECIPE,
          python: str = PY, in_registry: bool = False) -> Stack:
    held = Held(base, recipe, python, frozenset(w.sha256 for w in wheels))
    return Stack(f"bake:{held.key}", held, variant, in_registry)


# -- the choice -----------------------------------------------------------------------------------


def test_the_largest_subset_wins_and_only_the_rest_is_installed() -> None:
    small = stack(NUMPY, variant="python/numpy")
    big = stack(TORCH, NUMPY, variant="python/torch")
    choice = choose(need(TORCH, NUMPY, TABULATE), [small, big], "variants")
    assert choice.stack == big
    assert choice.install == (TABULATE,)
    assert choice.parent == big.key
    assert "2 of 3 wheels, 1 installed" in choice.reason


def test_a_stack_with_anything_the_lock_does_not_name_is_never_taken() -> None:
    other_numpy = wheel("numpy", "2.0")  # another version
    rebuilt_numpy = wheel("numpy", "1.0", tag="rebuilt")  # same version, other bytes
    candidates = [
        stack(TORCH, other_numpy),
        stack(TORCH, rebuilt_numpy),
        stack(TORCH, NUMPY, SIX),  # a package the job does not want
    ]
    choice = choose(need(TORCH, NUMPY, TABULATE), candidates, "images")
    assert choice.stack is None  # every one conflicts: the base, as without stacks
    assert choice.install == (NUMPY, TABULATE, TORCH)
    assert choice.considered == 3
    assert "built on the base" in choice.reason


def test_only_the_same_base_recipe_and_interpreter_fit() -> None:
    job = need(TORCH, NUMPY)
    for odd in (stack(TORCH, base=OTHER_BASE), stack(TORCH, recipe="sha256:" + "e" * 64),
                stack(TORCH, python="cpython 3.12.1 cp312 x86_64 glibc 2.36")):
        assert choose(job, [odd], "images").stack is None
    assert choose(job, [stack(TORCH)], "images").stack is not None


def test_ties_go_to_the_lowest_key_whatever_the_order_of_candidates() -> None:
    job = need(TORCH, NUMPY, TABULATE, SIX)
    ties = [stack(TORCH, NUMPY), stack(TABULATE, SIX), stack(NUMPY, SIX), stack(TORCH, SIX)]
    expected = min(s.key for s in ties)
    for order in itertools.permutations(ties):
        assert choose(job, order, "variants").stack.key == expected  # type: ignore[union-attr]


def test_the_sellers_setting_decides_which_images_are_stacks() -> None:
    job = need(TORCH, NUMPY, TABULATE)
    variant = stack(TORCH, variant="python/torch")
    image = stack(TORCH, NUMPY, variant="")  # a job's deps layer, not a prebaked variant
    assert choose(job, [variant, image], "images").stack == image
    assert choose(job, [variant, image], "variants").stack == variant
    none = choose(job, [variant, image], "none")
    assert none.stack is None and none.install == (NUMPY, TABULATE, TORCH)
    assert "none" in none.reason


def test_on_this_engine_before_the_registry_and_no_empty_stack() -> None:
    job = need(TORCH, NUMPY)
    here, there = stack(TORCH), stack(TORCH, in_registry=True)
    assert choose(job, [there, here], "variants").stack == here
    assert choose(job, [stack()], "images").stack is None  # holds nothing: no gain


def test_a_stack_key_is_its_content_not_its_order_nor_names() -> None:
    a = Held(BASE, RECIPE, PY, frozenset([TORCH.sha256, NUMPY.sha256]))
    b = Held(BASE, RECIPE, PY, frozenset([NUMPY.sha256, TORCH.sha256]))
    assert a.key == b.key and len(a.key) == 64
    assert Held(OTHER_BASE, RECIPE, PY, a.wheels).key != a.key
    assert need(TORCH, NUMPY).held.key == a.key  # the job's full set has the same name


# -- labels ---------------------------------------------------------------------------------------


def test_labels_round_trip_and_every_image_sets_all_three() -> None:
    held = need(TORCH, NUMPY).held
    labels = stack_labels(held, variant="python/torch")
    assert set(labels) == {STACK, VARIANT, PARENT}
    found = read_stack(f"bake:{held.key}", held.key, labels)
    assert found == Stack(f"bake:{held.key}", held, "python/torch")
    job = stack_labels(None, parent=held.key)  # a job's image on that stack
    assert job == {STACK: "", VARIANT: "", PARENT: held.key}
    assert read_stack("bake:" + "1" * 64, "1" * 64, job) is None
    assert parent_of(job) == held.key
    assert parent_of({PARENT: "not a key"}) == "" and parent_of(None) == ""


def test_a_label_that_does_not_hash_to_the_images_key_is_no_stack() -> None:
    held = need(TORCH, NUMPY).held
    labels = stack_labels(held)
    # Relabelled, retagged or edited: never taken for a stack of some other set.
    assert read_stack("bake:" + "0" * 64, "0" * 64, labels) is None
    forged = dict(labels, **{STACK: labels[STACK].replace(TORCH.sha256, SIX.sha256)})
    assert read_stack(f"bake:{held.key}", held.key, forged) is None
    for bad in ("{", "[]", json.dumps({"format": 2}), json.dumps(
            {"format": 1, "base": BASE, "recipe": RECIPE, "python": PY, "wheels": ["zz"]})):
        assert read_stack(f"bake:{held.key}", held.key, {STACK: bad}) is None


def test_a_thousand_wheel_stack_fits_one_docker_argument() -> None:
    held = Held(BASE, RECIPE, PY, frozenset(hashlib.sha256(str(i).encode()).hexdigest()
                                            for i in range(1000)))
    text = encode_held(held)
    assert text is not None
    # Linux refuses one argv string of 128 KiB or more (MAX_ARG_STRLEN).
    assert len(f"bake.stack={text}".encode()) < 128 * 1024
    huge = Held(BASE, RECIPE, PY, frozenset(hashlib.sha256(str(i).encode()).hexdigest()
                                            for i in range(MAX_STACK_LABEL // 64)))
    assert encode_held(huge) is None
    with pytest.raises(ValueError, match="does not fit"):
        stack_labels(huge)


def test_label_values_are_checked_words() -> None:
    with pytest.raises(ValueError):
        stack_labels(need(TORCH).held, variant="python/torch\n--label x=y")
    with pytest.raises(ValueError):
        stack_labels(None, parent="../x")


# -- the wheelhouse -------------------------------------------------------------------------------


def test_the_install_step_reads_each_wheel_from_its_hash_folder_with_its_hash() -> None:
    text = install_requirements([TABULATE, NUMPY]).decode()
    assert text.splitlines() == [
        f"--find-links {MOUNT}/{NUMPY.sha256}",
        f"numpy==1.0 --hash=sha256:{NUMPY.sha256}",
        f"--find-links {MOUNT}/{TABULATE.sha256}",
        f"tabulate==1.0 --hash=sha256:{TABULATE.sha256}",
    ]
    assert f"--mount=type=cache,id={CACHE_ID},target={MOUNT},readonly" == INSTALL_MOUNT


def test_the_download_list_names_exactly_the_locked_files() -> None:
    doc = json.loads(fetch_list([TORCH, NUMPY]))
    assert doc == {"format": 1, "refetch": False, "files": [
        {"file": w.file, "url": w.url, "sha256": w.sha256} for w in (NUMPY, TORCH)]}
    assert fetch_list([NUMPY, TORCH]) == fetch_list([TORCH, NUMPY])  # same bytes, same cache
    assert json.loads(fetch_list([NUMPY], refetch=True))["refetch"] is True


@pytest.mark.parametrize("bad", [
    Wheel("x", "1.0", "../../etc/x-1.0-py3-none-any.whl", "a" * 64),
    Wheel("x", "1.0", "x-1.0-py3-none-any.whl", "a" * 64, url="https://h/y-1.0.whl"),
    Wheel("x", "1.0", "x-1.0-py3-none-any.whl", "A" * 64),
    Wheel("x", "1.0", "x-1.0-py3-none-any.whl", "a" * 63),
    Wheel("X y", "1.0", "x-1.0-py3-none-any.whl", "a" * 64),
    Wheel("x", "1.0\n", "x-1.0-py3-none-any.whl", "a" * 64),
    Wheel("x", "1.0", "x-1.0-py3-none-any.whl", "a" * 64, url="file:///etc/passwd"),
])
def test_nothing_but_a_locked_wheel_reaches_a_steps_files(bad: Wheel) -> None:
    assert not valid_wheel(bad)
    with pytest.raises(ValueError):
        install_requirements([bad])
    with pytest.raises(ValueError):
        fetch_list([bad])


# -- the deps recipe: which templates share stacks -------------------------------------------------


def test_templates_that_make_the_same_deps_layer_share_a_recipe(tmp_path: Path) -> None:
    from bake.templates import find_template

    python, transformers = find_template("python"), find_template("transformers")
    assert python.recipe == transformers.recipe and python.recipe.startswith("sha256:")
    assert python.digest != transformers.digest  # their images still differ, and their keys
    for name, body in (("mine", '{% extends "_base/Dockerfile.j2" %}\n{% block env %}'
                        "ENV X=1\n{% endblock %}\n"),
                       ("odd", '{% extends "_base/Dockerfile.j2" %}\n{%- block deps %}'
                        "RUN true\n{% endblock %}\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile.j2").write_text(body)
        (tmp_path / name / "template.toml").write_text('default_base = "python:3.11-slim"\n')
    assert find_template("mine", (str(tmp_path),)).recipe == python.recipe
    assert find_template("odd", (str(tmp_path),)).recipe != python.recipe  # its own deps block


def test_a_variant_is_looked_up_only_when_its_pins_meet_the_lock() -> None:
    from bake.stacks.choice import stacks_mode, variant_may_fit

    job = need(TORCH, NUMPY, TABULATE)
    assert variant_may_fit(["torch==1.0", "numpy==1.0"], job)
    assert variant_may_fit(["Torch>=0.9"], job)  # names compare canonically
    assert not variant_may_fit(["torch==1.0", "numpy==2.3.5"], job)  # another numpy
    assert not variant_may_fit(["torch==1.0", "pandas==1.0"], job)  # pandas: not in the lock
    assert not variant_may_fit([], job) and not variant_may_fit(["not a requirement!"], job)
    assert [stacks_mode(v) for v in ("variants", "images", "none", "?")] == [
        "variants", "images", "none", "none"]


def _plock(*pins: str, target: Target = TARGET) -> PythonLock:
    return PythonLock(target, tuple(sorted((fake_dist(p) for p in pins), key=lambda d: d.name)))


def test_a_variant_the_lock_misses_only_by_versions_is_preferred() -> None:
    job = _plock("alpha==1.1", "beta==1.0", "gamma==1.0")
    ab = _plock("alpha==1.0", "beta==1.0")
    a = _plock("alpha==1.0")
    # The largest variant whose projects the lock all holds, some at other files.
    assert preferred_pins(job, [("t/a", a), ("t/ab", ab)]) == ("t/ab", ab)
    # None when it fits already (nothing to gain), ...
    assert preferred_pins(_plock("alpha==1.0", "beta==1.0", "gamma==1.0"),
                          [("t/ab", ab)]) is None
    # ... when it holds a project the lock does not (it could never be the job's stack), ...
    assert preferred_pins(job, [("t/ad", _plock("alpha==1.0", "delta==1.0"))]) is None
    # ... or when it was locked for another interpreter.
    other = dataclasses.replace(TARGET, python="3.12.1", abi="cp312")
    assert preferred_pins(job, [("t/ab", _plock("alpha==1.0", "beta==1.0", target=other))]) is None
    # Ties: the lower name, whatever the order.
    ab2 = _plock("alpha==1.0", "gamma==1.0")
    assert preferred_pins(job, [("t/z", ab2), ("t/ab", ab)])[0] == "t/ab"
    assert preferred_pins(job, [("t/ab", ab), ("t/z", ab2)])[0] == "t/ab"
