"""Pricing helpers shared by acme's workflows."""


def order_total(items):
    return round(sum(item["price"] * item.get("qty", 1) for item in items), 2)
