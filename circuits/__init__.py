"""circuits: when, during pretraining, do attention circuits form?

Data flows one way: configs -> data -> models -> train -> discovery -> report.
"""
