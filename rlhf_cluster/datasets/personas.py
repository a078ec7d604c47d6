"""The `personas` attribute world: K named attributes, users are weight vectors over them.

Responses. An answer to "How do I {task}?" is "To {task}, {tip}, {markers}." Each response has a level
φ_k ∈ {-1, 0, +1} per attribute k (uniform, independent); level 0 shows no marker, ±1 shows one marker
word (an adverb) for that attribute and direction, in shuffled order. Markers are topic-dependent:
every (attribute, direction) has a pool of four words, topic i uses word (i + k) mod 3, so each topic
has its own mix and a word means the same thing everywhere. Unseen topics (test_unseen_topics) keep
that rule with new topic words ('mix': seen markers in new combinations) or use the fourth pool word,
which never occurs in a seen topic ('new'). With ``quality_weight`` > 0 a shared quality level q is
shown the same way and everyone values it.

Labels. P(user prefers a over b) = σ(β·w·(φ(a) − φ(b)) + quality_weight·(q(a) − q(b))), sampled.
Users: 'discrete' type j < K is +e_j, type K + j is −e_j (users cycle through the n_user_types types);
'dirichlet' w ~ Dir(α·1); 'lowrank' w = U z / √rank, U a fixed orthonormal K×rank basis, z ~ N(0, I).
The 'lowrank' population is symmetric (w and −w equally likely): without quality_weight nearly every
pair is contested and no non-personalized model beats 1/2.

Contested. A pair is contested when users disagree on the preferred side: for 'discrete', at least
one type strictly prefers each side; for the continuous models, at least ``contested_min_share`` of the
population (``n_population`` prior samples) strictly prefers each side.

Context. 'survey': one fixed set of n_context contested seen-topic pairs, answered by every user;
'random': each user's own n_context random seen-topic pairs. A user's context is shared by all their
examples. Ceilings: exact over the types for 'discrete'; over the prior sample (importance weights =
context likelihoods) for 'dirichlet' and 'lowrank'.

Splits. train / validation / test_seen_users: the seen users, fresh target pairs each; test_unseen_users
(seen topics) and test_unseen_topics (unseen topics): the unseen users.
"""

from __future__ import annotations

import numpy as np

from rlhf_cluster.datasets import (
    GeneratedDataset,
    ceilings,
    example_row,
    labelled_pair,
    pair_key,
    pick,
    split_ceilings,
    split_rng,
)

# name, (low adjective, high adjective), (low markers, high markers): four words each (three + one held out)
ATTRIBUTES = (
    (
        "verbosity",
        ("brief", "detailed"),
        (
            ("briefly", "tersely", "concisely", "succinctly"),
            ("elaborately", "thoroughly", "exhaustively", "expansively"),
        ),
    ),
    (
        "formality",
        ("casual", "formal"),
        (("casually", "chattily", "breezily", "informally"), ("formally", "properly", "courteously", "respectfully")),
    ),
    (
        "humour",
        ("serious", "humorous"),
        (("seriously", "soberly", "gravely", "earnestly"), ("playfully", "jokingly", "wittily", "cheekily")),
    ),
    (
        "technicality",
        ("plain", "technical"),
        (
            ("simply", "plainly", "intuitively", "accessibly"),
            ("technically", "rigorously", "quantitatively", "precisely"),
        ),
    ),
    (
        "warmth",
        ("detached", "warm"),
        (("coolly", "detachedly", "impersonally", "neutrally"), ("warmly", "kindly", "gently", "caringly")),
    ),
    (
        "directness",
        ("tentative", "direct"),
        (("tentatively", "vaguely", "hesitantly", "indirectly"), ("directly", "bluntly", "decisively", "frankly")),
    ),
    (
        "optimism",
        ("pessimistic", "optimistic"),
        (("gloomily", "grimly", "bleakly", "doubtfully"), ("cheerfully", "hopefully", "brightly", "optimistically")),
    ),
    (
        "caution",
        ("bold", "cautious"),
        (("boldly", "daringly", "recklessly", "fearlessly"), ("cautiously", "carefully", "safely", "prudently")),
    ),
)
QUALITY = (
    "quality",
    ("sloppy", "accurate"),
    (("sloppily", "wrongly", "carelessly", "confusedly"), ("correctly", "accurately", "expertly", "clearly")),
)
# name, tasks, tips; the first n_topics are seen, the next n_unseen_topics unseen
TOPICS = (
    (
        "cooking",
        ("bake bread", "make soup", "cook rice"),
        (
            "start with fresh ingredients",
            "taste as you go and adjust the salt",
            "prepare everything before you turn on the heat",
        ),
    ),
    (
        "gardening",
        ("grow tomatoes", "prune roses", "start seedlings"),
        ("water early in the morning", "give the plants plenty of sun", "add compost to the soil in spring"),
    ),
    (
        "fitness",
        ("build strength", "start running", "improve flexibility"),
        ("train three times a week", "rest well between sessions", "increase the load a little each week"),
    ),
    (
        "travel",
        ("pack for a trip", "plan a budget holiday", "beat jet lag"),
        ("make a list a week before", "book trains and rooms early", "keep your documents in one pocket"),
    ),
    (
        "budgeting",
        ("save money", "pay off debt", "plan a monthly budget"),
        (
            "track every expense for a month",
            "set up an automatic transfer on payday",
            "cut one subscription you rarely use",
        ),
    ),
    (
        "programming",
        ("learn python", "fix a bug", "write tests"),
        (
            "reproduce the problem with a small example",
            "read the error message line by line",
            "write one small function at a time",
        ),
    ),
    (
        "music",
        ("learn guitar", "read sheet music", "practise piano"),
        ("practise twenty minutes every day", "play slowly with a metronome", "learn one song you love first"),
    ),
    (
        "photography",
        ("take portraits", "shoot at night", "edit photos"),
        (
            "use soft light from a window",
            "hold the camera steady with both hands",
            "shoot many frames and keep the best",
        ),
    ),
    (
        "home_repair",
        ("fix a leaking tap", "paint a room", "hang a shelf"),
        (
            "turn off the water supply first",
            "protect the floor with old sheets",
            "mark the wall with a pencil and a level",
        ),
    ),
    (
        "studying",
        ("prepare for exams", "take better notes", "remember vocabulary"),
        (
            "test yourself instead of rereading",
            "review the notes the same evening",
            "spread practice over several days",
        ),
    ),
    (
        "cycling",
        ("commute by bike", "fix a flat tyre", "ride in the rain"),
        ("check the tyre pressure every week", "carry a spare tube and a pump", "wear bright clothes and use lights"),
    ),
    (
        "coffee",
        ("brew espresso", "make cold brew", "choose coffee beans"),
        ("grind the beans just before brewing", "weigh the coffee and the water", "store beans in an airtight jar"),
    ),
)
QUESTIONS = (
    "How do I {task}?",
    "What is the best way to {task}?",
    "Any advice on how to {task}?",
    "Can you explain how to {task}?",
)


class World:
    """Attributes, topics and the population of user weights for one set of options and seed."""

    def __init__(self, opts, seed: int):
        self.opts = opts
        self.attributes = ATTRIBUTES[: opts.n_attributes] + ((QUALITY,) if opts.quality_weight > 0 else ())
        self.n_features = len(self.attributes)  # K, plus 1 when quality is shown
        self.seen = tuple(range(opts.n_topics))
        self.unseen = tuple(range(opts.n_topics, opts.n_topics + opts.n_unseen_topics))
        rng = split_rng(seed, 90)
        self.basis = np.linalg.qr(rng.normal(size=(opts.n_attributes, opts.rank)))[0]  # lowrank only
        self.population = self.draw_weights(rng, opts.n_population) if opts.user_model != "discrete" else self.types()
        self.coef = self.coefficients(self.population)  # (S, F)
        self.prior = np.ones(len(self.population)) / len(self.population)

    def types(self) -> np.ndarray:
        """Discrete types: +e_j for j < K, then -e_j."""
        k = self.opts.n_attributes
        return np.array([np.eye(k)[j % k] * (1 if j < k else -1) for j in range(self.opts.n_user_types)])

    def draw_weights(self, rng, n: int) -> np.ndarray:
        """n user weight vectors from the continuous prior."""
        k = self.opts.n_attributes
        if self.opts.user_model == "dirichlet":
            return rng.dirichlet(np.full(k, self.opts.dirichlet_alpha), size=n)
        return rng.normal(size=(n, self.opts.rank)) @ self.basis.T / np.sqrt(self.opts.rank)

    def coefficients(self, weights: np.ndarray) -> np.ndarray:
        """Logit coefficients on the feature difference: [β·w, quality_weight]."""
        coef = self.opts.beta * np.atleast_2d(weights)
        if self.opts.quality_weight > 0:
            coef = np.hstack([coef, np.full((len(coef), 1), self.opts.quality_weight)])
        return coef

    def contested(self, delta: np.ndarray) -> bool:
        """Do users disagree on the preferred side of a pair with feature difference ``delta``?"""
        u = self.coef @ delta
        pos, neg = self.prior @ (u > 0), self.prior @ (u < 0)
        if self.opts.user_model == "discrete":
            return bool(pos > 0 and neg > 0)
        return bool(pos >= self.opts.contested_min_share and neg >= self.opts.contested_min_share)

    def marker(self, topic: int, k: int, level: int) -> str:
        """The word that shows attribute k at level ±1 in this topic."""
        index = 3 if (self.opts.unseen_topic_markers == "new" and topic in self.unseen) else (topic + k) % 3
        return self.attributes[k][2][(level + 1) // 2][index]

    def respond(self, rng, topic: int, task: str, levels: np.ndarray) -> str:
        """One response text showing ``levels`` (one per feature)."""
        words = [self.marker(topic, k, int(v)) for k, v in enumerate(levels) if v != 0]
        words = [words[i] for i in rng.permutation(len(words))]
        body = f"To {task}, {pick(rng, TOPICS[topic][2])}"
        return body + (", " + " ".join(words) if words else "") + "."

    def sample_pair(self, rng, topics: tuple, contested_only: bool = False) -> tuple:
        """(topic, prompt, text_a, text_b, delta = φ(a) − φ(b)); contested_only falls back after 1000 tries."""
        for attempt in range(1000):
            fa, fb = (rng.integers(-1, 2, size=self.n_features) for _ in range(2))
            delta = (fa - fb).astype(float)
            if delta.any() and (not contested_only or self.contested(delta) or attempt == 999):
                break
        topic = pick(rng, topics)
        task = pick(rng, TOPICS[topic][1])
        prompt = pick(rng, QUESTIONS).format(task=task)
        return topic, prompt, self.respond(rng, topic, task, fa), self.respond(rng, topic, task, fb), delta


def labelled(rng, world: World, coef: np.ndarray, pair: tuple) -> tuple[dict, np.ndarray, float]:
    """Sample a user's label for a pair: (pair dict, Δ chosen − rejected, P(user prefers chosen))."""
    _, prompt, a, b, delta = pair
    p_a = float(ceilings.sigmoid(coef @ delta))
    a_wins = bool(rng.random() < p_a)
    return labelled_pair(prompt, a, b, a_wins), (delta if a_wins else -delta), (p_a if a_wins else 1 - p_a)


def describe(weights: np.ndarray, opts) -> str:
    """Ground-truth text: the attributes the user weighs, strongest first, and those they ignore."""
    scale = np.abs(weights).max() or 1.0
    strong, mild, ignored = [], [], []
    for k in np.argsort(-np.abs(weights), kind="stable"):
        name, adjectives, _ = ATTRIBUTES[k]
        rel = abs(weights[k]) / scale
        adj = adjectives[int(weights[k] > 0)]
        (strong if rel >= 0.5 else mild if rel >= 0.2 else ignored).append(adj if rel >= 0.2 else name)
    parts = [f"prefers {_join(strong, 'and')} answers"]
    parts += [f"somewhat prefers {_join(mild, 'and')} ones"] if mild else []
    parts += [f"does not care about {_join(ignored, 'or')}"] if ignored else []
    text = "This user " + (parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}") + "."
    if opts.quality_weight > 0:
        text += " Like everyone, they also prefer accurate answers."
    return text


def _join(words: list[str], last: str) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


def make_users(rng, world: World, prefix: str, n: int, survey: list | None) -> list[dict]:
    """Users with weights, description and their labelled context (the survey or random pairs)."""
    opts = world.opts
    weights = (
        world.population[np.arange(n) % len(world.population)]
        if opts.user_model == "discrete"
        else world.draw_weights(rng, n)
    )
    users = []
    for i, w in enumerate(weights):
        coef = world.coefficients(w)[0]
        pairs = survey if survey is not None else [world.sample_pair(rng, world.seen) for _ in range(opts.n_context)]
        labels = [labelled(rng, world, coef, pair) for pair in pairs]
        users.append(
            {
                "id": f"personas-{prefix}{i:04d}",
                "coef": coef,
                "description": describe(w, opts),
                "context": [c for c, _, _ in labels],
                "context_delta": np.array([d for _, d, _ in labels]),
            }
        )
    return users


def make_split(rng, world: World, name: str, users: list[dict], topics: tuple) -> tuple[list[dict], dict]:
    """Rows of one split (examples_per_user per user) and their ceilings."""
    rows, deltas, owners = [], [], []
    for u, user in enumerate(users):
        avoid = {pair_key(c["prompt"], c["chosen"], c["rejected"]) for c in user["context"]}
        for _ in range(world.opts.examples_per_user):
            pair = world.sample_pair(rng, topics)
            while pair_key(*pair[1:4]) in avoid:
                pair = world.sample_pair(rng, topics)
            target, delta, p = labelled(rng, world, user["coef"], pair)
            rows.append(
                example_row(
                    user["id"],
                    user["context"],
                    target,
                    split=name,
                    topic=TOPICS[pair[0]][0],
                    contested=world.contested(delta),
                    user_description=user["description"],
                    p_chosen=p,
                )
            )
            deltas.append(delta)
            owners.append(u)
    return rows, _ceilings(world, users, rows, np.array(deltas), np.array(owners))


def _ceilings(world: World, users: list[dict], rows: list[dict], deltas: np.ndarray, owners: np.ndarray) -> dict:
    if not rows:
        return ceilings.summarize({}, np.zeros(0, bool))
    p_pop = ceilings.sigmoid(deltas @ world.coef.T)  # (R, S)
    per_user = np.array(
        [  # context log-likelihood of each user's labels under every population member
            ceilings.context_loglik(ceilings.sigmoid(_as_rows(u["context_delta"], world) @ world.coef.T)[None])[0]
            for u in users
        ]
    )
    p_true = np.array([r["p_chosen"] for r in rows])
    contested = np.array([r["contested"] for r in rows], dtype=bool)
    return split_ceilings(p_true, p_pop, world.prior, per_user[owners], contested)


def _as_rows(deltas: np.ndarray, world: World) -> np.ndarray:
    """A user's context Δs as an (n, F) matrix, also when n = 0."""
    return deltas.reshape(-1, world.n_features)


def generate(opts, seed: int) -> GeneratedDataset:
    """All splits: train / validation / test_seen_users, test_unseen_users, test_unseen_topics."""
    world = World(opts, seed)
    survey_rng = split_rng(seed, 2)
    survey = (
        [world.sample_pair(survey_rng, world.seen, contested_only=True) for _ in range(opts.n_context)]
        if opts.context_mode == "survey"
        else None
    )
    seen = make_users(split_rng(seed, 0), world, "u", opts.n_train_users, survey)
    unseen = make_users(split_rng(seed, 1), world, "v", opts.n_test_users, survey)
    plan = [
        ("train", seen, world.seen),
        ("validation", seen, world.seen),
        ("test_seen_users", seen, world.seen),
        ("test_unseen_users", unseen, world.seen),
    ]
    plan += [("test_unseen_topics", unseen, world.unseen)] if world.unseen else []
    splits, table = {}, {}
    for i, (name, users, topics) in enumerate(plan):
        splits[name], table[name] = make_split(split_rng(seed, 10 + i), world, name, users, topics)
    return GeneratedDataset("personas", splits, table, __doc__.split("\n", 2)[2].strip(), _facts(world, survey))


def _facts(world: World, survey: list | None) -> dict:
    """What a reader needs to interpret the data: attributes, topics, marker words, the survey."""
    markers = {
        TOPICS[t][0]: {
            a[0]: {"low": world.marker(t, k, -1), "high": world.marker(t, k, 1)} for k, a in enumerate(world.attributes)
        }
        for t in world.seen + world.unseen
    }
    facts = {
        "attributes": [a[0] for a in world.attributes],
        "seen_topics": [TOPICS[t][0] for t in world.seen],
        "unseen_topics": [TOPICS[t][0] for t in world.unseen],
        "markers": markers,
    }
    if world.opts.user_model == "discrete":
        facts["user_types"] = world.population.tolist()
    if survey is not None:
        facts["survey"] = [{"prompt": p[1], "a": p[2], "b": p[3], "delta_a_minus_b": p[4].tolist()} for p in survey]
    return facts
