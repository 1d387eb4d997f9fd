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
