"""Measure the embedded local model: start-up, first answer, tokens/s, embedding latency, memory.

Run: ``.venv/bin/python benchmarks/local_model.py`` (after ``scripts/setup``).
"""

import os
import platform
import statistics
import time
from pathlib import Path

import openai

from llm_assets.local import LocalBackend

QUESTION = "Explain in detail why a starship captain must be a good listener."


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    launched = time.perf_counter()
    with LocalBackend() as backend:
        ready = time.perf_counter() - launched
        client = openai.OpenAI(base_url=backend.base_url, api_key="unused")
        first = client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "Hello!"}]
        )
        first_answer = time.perf_counter() - launched
        assert first.choices[0].message.content

        rates = []
        for _ in range(3):
            started = time.perf_counter()
            answer = client.chat.completions.create(
                model="gpt-4o-mini",
                max_tokens=100,
                temperature=0.7,
                messages=[{"role": "user", "content": QUESTION}],
            )
            elapsed = time.perf_counter() - started
            rates.append(answer.usage.completion_tokens / elapsed)

        texts = [f"Answer number {i}: a captain listens to the crew before deciding." for i in range(32)]
        client.embeddings.create(model="text-embedding-3-small", input=texts[:1])  # warm
        single, batch = [], []
        for _ in range(5):
            started = time.perf_counter()
            client.embeddings.create(model="text-embedding-3-small", input=texts[:1])
            single.append(time.perf_counter() - started)
            started = time.perf_counter()
            client.embeddings.create(model="text-embedding-3-small", input=texts)
            batch.append(time.perf_counter() - started)
        memory = rss_mb(backend.process.pid)

    print(f"machine: {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores")
    print(f"launch -> server ready:           {ready:6.2f} s")
    print(f"launch -> first answer:           {first_answer:6.2f} s")
    print(f"chat, 100-token answers:          {statistics.median(rates):6.1f} tokens/s (median of 3)")
    print(f"embedding, 1 text:                {statistics.median(single) * 1000:6.1f} ms")
    print(
        f"embedding, 32 texts in 1 request: {statistics.median(batch) * 1000:6.1f} ms "
        f"({statistics.median(batch) * 1000 / 32:.1f} ms/text)"
    )
    print(f"server memory (RSS):              {memory:6.0f} MB")


if __name__ == "__main__":
    main()
