from slidefed.bench.dp import step_ratio


def test_step_ratio_reports_both_modes_against_plain() -> None:
    result = step_ratio(
        dim=16, hidden=8, attention=4, batch=4, min_len=3, max_len=9, reps=2
    )
    assert set(result) >= {"ratio_dp_to_plain", "ratio_hooks_to_plain", "plain_step_ms"}
    assert result["ratio_dp_to_plain"] > 0
    assert result["grad_sample_mode"] == "ew"
