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
