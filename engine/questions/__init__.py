"""The question set of a knowledge collection and how answers are graded: ``qa`` (questions, splits,
fact selection, the grader, which passage holds an answer) and ``edits`` (a document's values
replaced consistently, for counterfactual reader examples and the follows-the-passage probe).
Below both training and the bake-off, which each read questions and grade the same way."""
