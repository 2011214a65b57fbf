from aisys.quality.protocol import leave_last_one_out


def test_leave_last_one_out_per_user():
    split = leave_last_one_out({"a": [1, 2, 3, 4, 5], "b": [7, 8, 9], "c": [1, 2], "d": [6]})
    assert split.train == {"a": [1, 2, 3], "b": [7], "c": [1, 2], "d": [6]}
    assert split.valid.users == ["a", "b"]
    assert split.valid.histories == [[1, 2, 3], [7]]
    assert split.valid.targets.tolist() == [4, 8]
    assert split.test.users == ["a", "b"]
    assert split.test.histories == [[1, 2, 3, 4], [7, 8]]
    assert split.test.targets.tolist() == [5, 9]


def test_training_never_sees_held_out_items():
    histories = {f"u{n}": list(range(1, n + 4)) for n in range(5)}
    split = leave_last_one_out(histories)
    for user, valid_target, test_target in zip(split.test.users, split.valid.targets, split.test.targets):
        assert split.train[user] + [valid_target, test_target] == histories[user]


def test_time_cut_validation_cuts_the_events_before_the_test_items_in_time():
    from aisys.quality.protocol import time_cut_validation

    histories = {"a": [1, 2, 3, 2, 4, 5], "b": [6, 7, 8], "c": [9, 1], "d": [3, 4, 5]}
    times = {"a": [1, 2, 3, 8, 9, 10], "b": [1, 2, 10], "c": [1, 9], "d": [7, 8, 9]}
    # Before the test items: a [1,2,3,2,4] at 1,2,3,8,9; b [6,7] at 1,2; c [9,1] at 1,9 (short: wholly); d [3,4] at 7,8.
    # 11 events, the 9th (ceil 0.8 * 11) in time order is at t=8: ties stay before the cut.
    split = time_cut_validation(leave_last_one_out(histories), times)
    assert split.train == {"a": [1, 2, 3, 2], "b": [6, 7], "c": [9], "d": [3, 4]}
    # a comes back with 4 (2 is already in its history); c with 1; b and d have nothing after the cut.
    assert split.valid.users == ["a", "c"]
    assert split.valid.histories == [[1, 2, 3, 2], [9]]
    assert split.valid.targets.tolist() == [4, 1]
    assert split.valid.all_targets == [[4], [1]]
    assert split.test.targets.tolist() == [5, 8, 5]  # the test items are untouched
    for user, history, targets in zip(split.valid.users, split.valid.histories, split.valid.all_targets):
        assert not set(targets) & set(split.train[user])  # nothing fit on train has seen a valid target
        assert history == split.train[user]


def test_mixed_validation_keeps_the_next_item_requests_and_fits_on_neither_kind_of_target():
    from aisys.quality.protocol import time_cut_validation

    histories = {"a": [1, 2, 3, 2, 4, 5], "b": [6, 7, 8], "c": [9, 1], "d": [3, 4, 5]}
    times = {"a": [1, 2, 3, 8, 9, 10], "b": [1, 2, 10], "c": [1, 9], "d": [7, 8, 9]}
    split = time_cut_validation(leave_last_one_out(histories), times, keep_next_item=True)
    # Up to the cut (t=8) and without each evaluated user's h[-2]: b loses 7, d loses 4.
    assert split.train == {"a": [1, 2, 3, 2], "b": [6], "c": [9], "d": [3]}
    assert split.valid.users == ["a", "b", "d", "a", "c"]  # the next-item requests first, then the returning
    assert split.valid.histories == [[1, 2, 3, 2], [6], [3], [1, 2, 3, 2], [9]]
    assert split.valid.targets.tolist() == [4, 7, 4, 4, 1]
    assert split.valid.all_targets == [[4], [7], [4], [4], [1]]
    for user, targets in zip(split.valid.users, split.valid.all_targets):
        assert not set(targets) & set(split.train.get(user, []))
