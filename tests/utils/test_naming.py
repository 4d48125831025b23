"""The one slug of the project (antijanus.utils.naming): run folders and file names from text."""

from antijanus.utils.naming import slug


def test_slug_lowercases_and_joins_words_with_one_underscore():
    assert slug("A DSLR photo, of a corgi!") == "a_dslr_photo_of_a_corgi"
    assert slug("  a  smiling--bear ") == "a_smiling_bear"
    assert slug("x__y") == "x_y" and slug("_x_") == "x"


def test_slug_keeps_letters_of_any_script_and_digits():
    assert slug("Café 3D") == "café_3d"


def test_slug_cuts_at_the_limit_only_when_given():
    text = "a " * 50 + "corgi"
    assert slug(text) == "_".join(["a"] * 50 + ["corgi"])
    assert slug(text, limit=10) == "a_a_a_a_a_" and len(slug(text, limit=10)) == 10


def test_texts_that_differ_only_in_case_or_punctuation_share_a_slug():
    """Why a slug alone must not identify a run."""
    assert slug("a DSLR photo of a corgi") == slug("A DSLR photo of a corgi!")
