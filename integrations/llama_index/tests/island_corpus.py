"""A small corpus about a fictional island, and questions SmolLM2-135M answers from it at ratio 0.5."""

# Eight short passages; each question below is answered by exactly one of them.
ISLAND = [
    ("Lighthouse", "The lighthouse of Tessaly is painted bright yellow."),
    ("Governor", "The governor of Tessaly is a woman named Rosa."),
    ("Farming", "The main crop on Tessaly is potatoes."),
    ("Dogs", "The island holds its dog show every July."),
    ("School", "The school on Tessaly has a pet goat named Pepper."),
    ("Ferry", "The ferry to the mainland leaves every morning at seven."),
    ("Seals", "Grey seals sleep on the northern rocks of Tessaly in winter."),
    ("Founding", "Tessaly was settled in 1611 by salt traders."),
]
QUESTIONS = [
    ("What colour is the lighthouse of Tessaly?", "yellow"),
    ("What is the name of the governor of Tessaly?", "Rosa"),
    ("What is the main crop on Tessaly?", "potatoes"),
]
