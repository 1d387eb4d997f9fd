"""bake images / bake prune's plan: least recently used first, never an image in use."""

from __future__ import annotations

from bake.cache.images import BakedImage, baked_from, plan_prune

KEY = "a" * 64


NOW = 1_000_000_000.0
DAY = 86400.0


def _image(name: str, *, used_days_ago: float | None, size: int = 100, in_use: bool = False,
           created_days_ago: float = 30) -> BakedImage:
    return BakedImage(
        image=f"bake:{name * 64}"[:69], key=name * 64, template="python", size=size + 1000,
        unique_size=size, created=NOW - created_days_ago * DAY,
        last_used=None if used_days_ago is None else NOW - used_days_ago * DAY,
        id=f"sha256:{name}", in_use=in_use,
    )


def test_prune_by_age_removes_the_least_recently_used_first() -> None:
    images = [_image("a", used_days_ago=1), _image("b", used_days_ago=9),
              _image("c", used_days_ago=20), _image("d", used_days_ago=8)]
    plan = plan_prune(images, now=NOW, older_than=7 * DAY, keep_size=None)
    assert [i.key[0] for i in plan.remove] == ["c", "b", "d"]
    assert plan.spared == ()


def test_prune_to_a_size_stops_once_under_budget() -> None:
    images = [_image("a", used_days_ago=1, size=300), _image("b", used_days_ago=3, size=300),
              _image("c", used_days_ago=2, size=300)]
    plan = plan_prune(images, now=NOW, older_than=None, keep_size=400)
    assert [i.key[0] for i in plan.remove] == ["b", "c"]


def test_prune_never_removes_an_image_in_use() -> None:
    images = [_image("a", used_days_ago=30, in_use=True), _image("b", used_days_ago=20),
              _image("c", used_days_ago=1)]
    by_age = plan_prune(images, now=NOW, older_than=7 * DAY, keep_size=None)
    assert [i.key[0] for i in by_age.remove] == ["b"]
    assert [i.key[0] for i in by_age.spared] == ["a"]
    by_size = plan_prune(images, now=NOW, older_than=None, keep_size=0)
    assert [i.key[0] for i in by_size.remove] == ["b", "c"]
    assert [i.key[0] for i in by_size.spared] == ["a"]


def test_prune_counts_a_never_used_image_from_its_creation() -> None:
    images = [_image("a", used_days_ago=None, created_days_ago=10),
              _image("b", used_days_ago=None, created_days_ago=1)]
    plan = plan_prune(images, now=NOW, older_than=7 * DAY, keep_size=None)
    assert [i.key[0] for i in plan.remove] == ["a"]


def test_prune_with_both_limits() -> None:
    images = [_image("a", used_days_ago=10, size=100), _image("b", used_days_ago=3, size=500),
              _image("c", used_days_ago=2, size=500), _image("d", used_days_ago=1, size=500)]
    plan = plan_prune(images, now=NOW, older_than=7 * DAY, keep_size=1000)
    assert [i.key[0] for i in plan.remove] == ["a", "b"]


def test_baked_from_keeps_only_the_repositorys_keyed_tags() -> None:
    entries = [
        {"Id": "sha256:1", "RepoTags": [f"reg:5000/bake:{KEY}", "reg:5000/bake:latest",
                                        f"other/bake:{KEY}"],
         "Labels": {"bake.template": "python"}, "Size": 300, "SharedSize": 200,
         "Created": 5},
        {"Id": "sha256:2", "RepoTags": [f"reg:5000/bake-other:{KEY}"], "Size": 1},
        {"Id": "sha256:3", "RepoTags": None, "Size": 1},
        {"Id": "sha256:4", "RepoTags": [f"reg:5000/bake:{'b' * 64}"], "Size": 50,
         "SharedSize": -1, "Created": 6},
    ]
    found = baked_from(entries, "reg:5000/bake", in_use={"sha256:4"})
    assert [(i.image, i.size, i.unique_size, i.template, i.in_use) for i in found] == [
        (f"reg:5000/bake:{KEY}", 300, 100, "python", False),
        (f"reg:5000/bake:{'b' * 64}", 50, 50, "", True),
    ]


# -- stacks: what an image adds beyond its stack, and prune never orphaning one --------------------


def _on(parent: BakedImage | None, name: str, *, used_days_ago: float | None, size: int,
        stack: bool = False, in_use: bool = False) -> BakedImage:
    image = _image(name, used_days_ago=used_days_ago, size=size, in_use=in_use)
    from dataclasses import replace

    return replace(image, parent=parent.key if parent else "", stack=stack,
                   adds=size)  # footprint: what it adds beyond its stack


def test_a_stack_goes_only_with_every_image_built_on_it() -> None:
    stack = _on(None, "s", used_days_ago=30, size=5000, stack=True)
    old_job = _on(stack, "a", used_days_ago=20, size=10)
    new_job = _on(stack, "b", used_days_ago=1, size=10)
    plan = plan_prune([stack, old_job, new_job], now=NOW, older_than=7 * DAY, keep_size=None)
    # The stack has not been used itself for 30 days, but an image on it was, yesterday.
    assert [i.key[0] for i in plan.remove] == ["a"]
    both_old = plan_prune([stack, old_job], now=NOW, older_than=7 * DAY, keep_size=None)
    assert [i.key[0] for i in both_old.remove] == ["a", "s"]  # the image first, then its stack


def test_a_stack_under_an_image_in_use_is_kept_and_said_so() -> None:
    stack = _on(None, "s", used_days_ago=30, size=5000, stack=True)
    job = _on(stack, "a", used_days_ago=20, size=10, in_use=True)
    plan = plan_prune([stack, job], now=NOW, older_than=7 * DAY, keep_size=0)
    assert plan.remove == ()
    assert [i.key[0] for i in plan.spared] == ["a"]
    assert [i.key[0] for i in plan.held] == ["s"]


def test_keep_size_counts_what_each_adds_and_takes_images_before_their_stack() -> None:
    stack = _on(None, "s", used_days_ago=9, size=5000, stack=True)
    jobs = [_on(stack, n, used_days_ago=d, size=100) for n, d in (("a", 5), ("b", 2))]
    other = _on(None, "c", used_days_ago=3, size=1000)
    # 5000 + 100 + 100 + 1000 = 6200; the stack is as recent as "b" (2 days), so "a" then
    # "c" go, and "b" keeps its stack.
    plan = plan_prune([stack, *jobs, other], now=NOW, older_than=None, keep_size=5200)
    assert [i.key[0] for i in plan.remove] == ["a", "c"]
    everything = plan_prune([stack, *jobs, other], now=NOW, older_than=None, keep_size=0)
    assert [i.key[0] for i in everything.remove] == ["a", "c", "b", "s"]


def test_baked_from_reads_stacks_parents_and_what_each_adds() -> None:
    from bake.stacks.choice import Held
    from bake.stacks.labels import stack_labels

    held = Held("sha256:" + "b" * 64, "sha256:" + "d" * 64, "cpython 3.11.2",
                frozenset(["e" * 64]))
    stack_ref, job_ref = f"bake:{held.key}", f"bake:{KEY}"
    entries = [
        {"Id": "sha256:base", "RepoTags": ["python:3.11-slim"], "Size": 120, "SharedSize": 120,
         "Labels": {}},
        {"Id": "sha256:st", "RepoTags": [stack_ref], "Size": 5120, "SharedSize": 5120,
         "Labels": {**stack_labels(held, variant="python/torch"), "bake.template": "python",
                    "org.opencontainers.image.base.digest": "sha256:base"}},
        {"Id": "sha256:job", "RepoTags": [job_ref], "Size": 5150, "SharedSize": 5120,
         "Labels": {**stack_labels(None, parent=held.key), "bake.template": "python"}},
    ]
    found = {i.image: i for i in baked_from(entries, "bake", in_use=set())}
    stack, job = found[stack_ref], found[job_ref]
    assert (stack.stack, stack.variant, stack.parent, stack.adds) == (True, "python/torch", "",
                                                                      5000)
    assert (job.stack, job.parent, job.adds) == (False, held.key, 30)
    assert job.row()[2:6] == ("python", held.key[:12], "5.03 KiB", "30 B")
    assert stack.row()[2] == "stack python/torch"
    assert job.to_json()["parent"] == held.key and job.to_json()["adds"] == 30
