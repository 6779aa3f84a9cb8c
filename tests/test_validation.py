"""pvpp.validation: the one argument check every config and public function uses."""

import numpy as np
import pytest

from pvpp.validation import NotAnIntError, check_choice, check_int


def test_check_int_accepts_python_and_numpy_integers_at_or_above_the_minimum():
    assert check_int(3, "n", 1) == 3 and check_int(np.int64(0), "n", 0) == 0
    assert isinstance(check_int(np.int32(5), "n"), int)


@pytest.mark.parametrize("value", [True, 2.0, "3", None, np.float32(1)])
def test_check_int_refuses_other_types_with_an_error_that_is_both_type_and_value_error(value):
    with pytest.raises(NotAnIntError, match="n must be an int") as error:
        check_int(value, "n", 0)
    assert isinstance(error.value, TypeError) and isinstance(error.value, ValueError)


def test_check_int_and_check_choice_name_the_argument():
    with pytest.raises(ValueError, match="num_chains must be >= 1, got 0"):
        check_int(0, "num_chains", 1)
    with pytest.raises(ValueError, match=r"schedule must be one of \('a', 'b'\), got 'c'"):
        check_choice("c", "schedule", ("a", "b"))
