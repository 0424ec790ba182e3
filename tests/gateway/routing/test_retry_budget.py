from gateway.routing.retry_budget import RetryBudget


def test_minimum_retries_when_quiet() -> None:
    budget = RetryBudget(ratio=0.2, min_retries=2)
    with budget.request():
        assert budget.try_retry()
        assert budget.try_retry()
        assert not budget.try_retry()
        budget.release_retry()
        assert budget.try_retry()


def test_retries_scale_with_requests_in_flight() -> None:
    budget = RetryBudget(ratio=0.25, min_retries=1)
    requests = [budget.request() for _ in range(40)]
    for r in requests:
        r.__enter__()
    granted = sum(budget.try_retry() for _ in range(100))
    assert granted == 10  # 25% of 40 in flight
    for r in requests:
        r.__exit__(None, None, None)
    assert budget.requests_in_flight == 0


def test_release_never_goes_negative() -> None:
    budget = RetryBudget()
    budget.release_retry()
    assert budget.retries_in_flight == 0
