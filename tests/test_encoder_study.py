"""The logic of bench/encoder_study.py (the encoder variant's warm-start study), on made-up loss curves:
what "best within N steps" and "steps to reach" mean, and when the warm start would become the default."""

from __future__ import annotations

import pytest

from bench import encoder_study as study


def test_best_within_n_steps_sees_the_objectives_before_each_of_the_n_updates():
    losses = [0.5, 0.4, 0.45, 0.3, 0.35]
    assert study.best_within(losses, 1) == 0.5  # one step: only the start's objective was measured
    assert study.best_within(losses, 3) == 0.4
    assert study.best_within(losses, 5) == 0.3
    with pytest.raises(ValueError):
        study.best_within(losses, 6)
    with pytest.raises(ValueError):
        study.best_within(losses, 0)


def test_steps_to_reach_counts_the_updates_made_before_the_objective_is_reached():
    losses = [0.5, 0.4, 0.3, 0.2]
    assert study.steps_to_reach(losses, 0.5) == 0  # the start already does
    assert study.steps_to_reach(losses, 0.35) == 2
    assert study.steps_to_reach(losses, 0.1) is None
    assert study.fewest_steps({100: 0.3, 200: 0.2, 1000: 0.1}, 0.2) == 200
    assert study.fewest_steps({100: 0.3}, 0.2) is None


def _runs(encoder_best: dict[int, float], e4e_best: dict[int, float], target: str = "t", lr: float = 0.02):
    return [{"target": target, "lr": lr, "steps": n, "best": {"e4e": e4e_best[n], "generated": encoder_best[n]},
             "curves": {"e4e": [1.0] * n, "generated": [1.0] * (n - 1) + [encoder_best[n]]}}
            for n in encoder_best]


def test_the_goal_holds_only_when_every_target_and_rate_reaches_the_e4e_objective_within_200_steps():
    fast = _runs({200: 0.09, 1000: 0.08}, {200: 0.2, 1000: 0.1})
    rows = study.warm_start_rows(fast)
    assert len(rows) == 1 and rows[0]["e4e_goal"] == 0.1 and rows[0]["fewest_swept_steps"] == 200
    assert rows[0]["steps_in_longest_run"] == 999  # the made-up curve reaches it at its last step only
    assert study.meets_goal(rows)
    slow = _runs({200: 0.11, 1000: 0.08}, {200: 0.2, 1000: 0.1}, lr=0.2)
    rows = study.warm_start_rows(fast + slow)
    assert [r["fewest_swept_steps"] for r in rows] == [200, 1000]
    assert not study.meets_goal(rows)
    assert not study.meets_goal([])


def test_the_tables_show_every_start_and_say_whether_the_goal_holds():
    runs = _runs({200: 0.11, 1000: 0.08}, {200: 0.2, 1000: 0.1})
    data = [{"target": "gen20", "kind": "generated", "objective": {"e4e": 0.3, "generated": 0.2, "pictures": 0.25}}]
    quality = [{"target": "gen20", "lr": 0.02, "steps": 1000, "directions": {
        "generated essence (0 steps)": {"objective": 0.2, "transfer": 0.1, "consistency": 0.2,
                                        "target_similarity": 90.0, "identity": None}}}]
    text = study.markdown({"data_starts": ["e4e", "generated", "pictures"], "data": data, "quality": quality,
                           "warm_start": study.warm_start_rows(runs), "meets_goal": False,
                           "plan": {"eval_faces": 4}})
    assert "| gen20 | generated | 0.3000 | 0.2000 | 0.2500 |" in text
    assert "0.2000 / 0.1100" in text and "| 1000 |" in text and "**no**" in text
    assert "| n/a |" in text
