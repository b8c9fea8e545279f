"""The lab's studies: one scientific question each (see each study's ``question``).

``STUDIES`` maps a name to its :class:`~studies.study.Study`; ``explore_study(task)`` is the
generic study of any task no study covers (every model on the task's defaults, the generic
probe and census), so a newly registered task runs end to end without a study of its own.
"""

from __future__ import annotations

from analysis.tables import Gate
from studies.analyses import belief_simplex, memory_agents, successor_rsa
from studies.causal import (
    Steering,
    decoded_x,
    next_token_logprob,
    respond_logit,
    right_turn_logit,
)
from studies.study import Arm, Condition, Study

STUDIES: dict[str, Study] = {
    study.name: study
    for study in (
        Study(
            name="navigation",
            question="Do networks that predict observations on aliased graphs infer unseen "
            "links (zero-shot) and grow place and grid codes, on square and hexagonal graphs?",
            conditions=(
                Condition("square", "graph_nav", {"topology": "square"}),
                Condition("hex", "graph_nav", {"topology": "hex"}),
            ),
            # 0.45 of the gap from chance is the former revisit_accuracy >= 0.5 at 12 symbols
            gate=Gate(
                "revisit_accuracy",
                closes=0.45,
                why="recalls a revisited node's symbol about half the time, where the present "
                "token alone gives chance",
            ),
            headline=(
                "zero_shot_accuracy",
                "revisit_accuracy",
                "first_visit_accuracy",
                "frac_place",
                "frac_grid",
            ),
            analyses=(memory_agents,),
        ),
        Study(
            name="predictive_map",
            question="Do place codes skew against the direction of travel on directed walks "
            "and resemble the successor representation, and not on bidirectional walks?",
            conditions=(
                Condition("directed", "linear_track", {"p_forward": 0.8, "p_backward": 0.05}),
                Condition("bidirectional", "linear_track", {"p_forward": 0.4, "p_backward": 0.4}),
            ),
            gate=Gate(
                "revisit_accuracy",
                closes=0.45,
                why="recalls a visited position's symbol about half the time, where the present "
                "token alone gives chance",
            ),
            headline=("revisit_accuracy", "skew_against_travel", "rsa_sr_max"),
            analyses=(successor_rsa,),
        ),
        Study(
            name="splitter",
            question="On the shared stem of an alternation maze, do units split by route "
            "(retrospective) and can the upcoming turn be decoded (prospective)?",
            conditions=(Condition("figure8", "alternation"),),
            # the current node alone is right at the choice point in half the laps
            gate=Gate(
                "choice_accuracy",
                closes=0.8,
                why="predicts the turn at the choice point in 9 of 10 laps, where the current "
                "node alone is right in half",
            ),
            headline=("choice_accuracy", "frac_splitter"),
            steering=Steering(
                "next_turn@on_stem",
                right_turn_logit,
                output=1,
                expect="steering the stem code towards 'next turn: right' raises the right "
                "arm's logit at the choice point",
            ),
        ),
        Study(
            name="grid_cells",
            question="Does path integration with a difference-of-softmaxes place-cell readout "
            "grow grid cells, and do the Gaussian and Cartesian readout controls remove them?",
            conditions=(
                Condition("dos", "path_integration", {"readout": "dos"}),
                Condition("gaussian", "path_integration", {"readout": "gaussian"}),
                Condition("cartesian", "path_integration", {"readout": "cartesian"}),
            ),
            gate=Gate(
                "pos_error",
                references=("position_free", "velocity_only"),
                closes=0.7,
                best=0.0,
                why="decoded position within about 25 cm, where knowing no position or only the "
                "present velocity leaves about 85 cm",
            ),
            headline=("pos_error", "frac_grid", "grid_60_median"),
            steering=Steering(
                "pos_xy",
                decoded_x,
                output=0,
                expect="steering along the decoded x moves the output's position code in x",
            ),
        ),
        Study(
            name="time_cells",
            question="Do networks that time intervals grow time cells that tile the delay "
            "with widths growing with peak time, or ramps?",
            conditions=(Condition("intervals", "interval_timing"),),
            # both references never respond (no trial right), so this is trial_accuracy >= 0.8
            gate=Gate(
                "trial_accuracy",
                references=("history_free", "clock"),
                closes=0.8,
                why="responds on time in 8 of 10 trials, which neither the present token nor "
                "the step count ever does",
            ),
            headline=("trial_accuracy", "frac_time", "frac_ramp", "time_slope", "time_r"),
            steering=Steering(
                "t_since_cue@in_trial",
                respond_logit,
                expect="steering towards more elapsed time raises the respond logit in the delay",
            ),
        ),
        Study(
            name="copying",
            question="Which architectures copy strings longer than any seen in training, and "
            "which positional schemes let a transformer do it?",
            conditions=(Condition("copy", "copying"),),
            gate=Gate(
                "accuracy_in_dist",
                closes=0.9,
                why="copies 9 of 10 letters of training-length strings, where the present "
                "letter alone gives chance",
            ),
            headline=("accuracy_in_dist", "long_accuracy", "long_string_accuracy"),
            arms=tuple(
                Arm(f"transformer-{scheme}", "transformer", {"positional": scheme})
                for scheme in ("nope", "rope", "alibi", "hard_alibi")
            ),
        ),
        Study(
            name="state_tracking",
            question="Which architectures track the state of a group word at every length: "
            "parity and Z60 (solvable) vs A5 (not), by depth, and with Mamba's negative "
            "eigenvalues?",
            conditions=(
                Condition("Z2", "group_word", {"group": "Z2"}),
                Condition("Z60", "group_word", {"group": "Z60"}),
                Condition("A5", "group_word", {"group": "A5"}),
            ),
            # parity: the present element alone is right in 1/2 + 1/(2 n_steps) of states
            gate=Gate(
                "accuracy",
                closes=0.8,
                why="tracks the running product (about 9 in 10 states of parity), beyond what "
                "the present element alone tells",
            ),
            headline=("accuracy", "accuracy_last_quarter", "sequence_accuracy"),
            arms=(
                Arm("transformer-1layer", "transformer", {"n_layers": 1}),
                Arm("transformer-4layer", "transformer", {"n_layers": 4}),
                Arm("mamba-1layer", "mamba", {"n_layers": 1}),
                Arm("mamba-signed", "mamba", {"eigenvalues": "signed"}),
            ),
        ),
        Study(
            name="belief_geometry",
            question="Is the Bayesian belief state of a hidden Markov process linearly "
            "represented, beyond what an untrained network and a control task give?",
            conditions=(Condition("mess3", "mess3"),),
            # a KL gap to Bayes is a cross-entropy gap: closing half of it is using at least
            # half of what the history adds to the present token's prediction
            gate=Gate(
                "kl_to_bayes",
                closes=0.5,
                best=0.0,
                why="uses at least half of what the history adds to the present token's "
                "prediction of the next",
            ),
            headline=("kl_to_bayes", "accuracy"),
            steering=Steering(
                "belief",
                next_token_logprob,
                output=0,
                expect="steering towards belief in state 0 raises the probability of token 0",
            ),
            analyses=(belief_simplex,),
        ),
    )
}


def explore_study(task: str) -> Study:
    """The generic study of ``task``: its defaults (and the preset's ``[tasks.<task>]``),
    every model, no gate."""
    return Study(
        name="explore",
        question=f"What do the networks represent on {task}?",
        conditions=(Condition(task, task),),
        gate=None,
        headline=(),
    )


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid studies: {sorted(STUDIES)}")
    return STUDIES[name]
