"""A small corpus about a fictional town, and questions SmolLM2-135M answers from it at ratio 0.5."""

# Eight short passages about a fictional town; the questions below are answered by exactly one of them.
TOWN = [
    ("Founding", "The town of Marrowby was founded in 1742 by a ferryman named Osric Vell."),
    ("Bakery", "The bakery on Lantern Street is famous for its blue plum tarts, baked every Tuesday."),
    ("Clock", "The clock tower of Marrowby has a bell called Old Hannah that rings at noon."),
    ("River", "The river Sallow runs east of the town and freezes over almost every winter."),
    ("Mayor", "The current mayor of Marrowby is Ada Fenwick, a retired lighthouse keeper."),
    ("Market", "Every Saturday a cheese market fills the square in front of the town hall."),
    ("School", "Marrowby's only school has forty pupils and a library of old sea charts."),
    ("Festival", "Each autumn the town holds a lantern festival on the banks of the river Sallow."),
]
QUESTIONS = [
    ("What is the name of the bell in the clock tower?", "Old Hannah"),
    ("What fills the town square every Saturday?", "cheese"),
]
