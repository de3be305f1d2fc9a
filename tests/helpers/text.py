"""Small deterministic corpora for the pretraining tests."""

import random


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    who = ["the cat", "a dog", "my friend", "the teacher", "our robot", "an old man"]
    does = ["sees", "likes", "builds", "finds", "paints", "carries"]
    what = ["a red box", "the blue sky", "two green apples", "an old map", "the small house", "a long road"]
    return [" ".join(f"{rng.choice(who)} {rng.choice(does)} {rng.choice(what)}." for _ in range(rng.randint(3, 8)))
            for _ in range(n)]
