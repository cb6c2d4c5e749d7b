"""The demo-quality bench's text metrics (``bench/demo_quality.py``) count what they claim to count."""

from __future__ import annotations

import pytest
from scripts import load_script


@pytest.fixture(scope="module")
def dq():
    return load_script("bench/demo_quality.py")


def test_critic_orders_counts_instructions_and_review_labels(dq):
    # the demo model's rewrites and answers, as they came out: the critic's voice carried on
    assert dq.critic_orders("Spider silk resists hydrolysis. Add the missing details.") == 1
    assert dq.critic_orders("**Reasoning Steps**:\n1. Explain why this is wrong.\n2. Name the key features: beta-sheets.") == 3  # two orders, one label
    assert dq.critic_orders("1. Step 2 is wrong: the mite kills its host. Missing details: the protein.") == 2
    assert dq.critic_orders("4. The loading is missing: strikes at about 20 m/s.") == 1
    # reasoning, including a seed rewrite's numbered steps and verbs inside a sentence, is not an order
    clean = (
        "**Core Concepts**: Cortical bone is built from osteons.\n\n**Reasoning Steps**:\n"
        "1. The cement lines form weak planes; cracks add length along them.\n"
        "2. Crack deflection and bridging explain the rising R-curve.\n\n**Hypothesis**: Bone splits along its axis."
    )
    assert dq.critic_orders(clean) == 0


def test_uptake_is_the_share_of_the_critiques_new_words_the_rewrite_uses(dq):
    thinking = "Bone is anisotropic because osteons are aligned."
    critique = "Name the cement lines and the crack bridging."  # new: cement, lines, crack, bridging (+ "name")
    assert dq.uptake(thinking, critique, thinking) == 0.0
    assert dq.uptake(thinking, critique, "Cement lines deflect the crack; bridging holds it.") == pytest.approx(4 / 5)
    assert dq.uptake(thinking, "Osteons are aligned.", "anything") is None  # the critique adds nothing to take up
