"""A reward a random tiny model can improve on within a few steps (used by tests through reward.custom_function):
the share of response characters that are the letter 'a'."""


def share_of_a(data_source, solution_str, ground_truth, extra_info=None, **_):
    return solution_str.count("a") / max(len(solution_str), 1)
