"""A synthetic shop with real structure, for the demo and the fast tests.

A three-level taxonomy (department > subcategory > product type) drives everything: titles and brands
come from word lists keyed to it, so text embeddings carry the taxonomy the way real titles do; users
keep to a few long-term interests and move between neighbouring categories, so the next item is
predictable from the recent ones and from the hierarchy; popularity inside a product type is Zipf-like,
so head and tail are meaningful. A few items lose their deepest category, as real catalogues do, and
small product types fall under the tag threshold, so ``<unknown>`` and ``<other>`` both occur.
Everything is drawn from one seeded generator: the same config gives the same dataset, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.dataset import Dataset, Item
from training.data.raw import BuildOptions, RawData, build_dataset
from training.errors import ConfigError

__all__ = ["TAXONOMY", "SyntheticConfig", "generate", "generate_raw"]

ROOT = "Store"

#: department -> subcategory -> product types (the leaves).
TAXONOMY: dict[str, dict[str, list[str]]] = {
    "Beauty": {
        "Skin Care": ["Face Cream", "Cleanser", "Serum", "Sunscreen"],
        "Makeup": ["Lipstick", "Mascara", "Foundation", "Nail Polish"],
        "Hair Care": ["Shampoo", "Conditioner", "Hair Oil", "Styling Gel"],
        "Fragrance": ["Eau de Parfum", "Body Mist", "Cologne"],
    },
    "Sports": {
        "Running": ["Running Shoes", "Running Socks", "Hydration Vest"],
        "Cycling": ["Bike Helmet", "Cycling Gloves", "Bike Light"],
        "Fitness": ["Yoga Mat", "Dumbbell Set", "Resistance Band", "Kettlebell"],
        "Camping": ["Tent", "Sleeping Bag", "Camp Stove"],
    },
    "Kitchen": {
        "Cookware": ["Frying Pan", "Saucepan", "Dutch Oven"],
        "Appliances": ["Blender", "Toaster", "Coffee Maker", "Kettle"],
        "Tableware": ["Dinner Plate", "Mug", "Wine Glass"],
        "Storage": ["Food Container", "Spice Rack", "Bread Bin"],
    },
    "Electronics": {
        "Audio": ["Headphones", "Bluetooth Speaker", "Earbuds"],
        "Computers": ["Keyboard", "Mouse", "Monitor", "USB Hub"],
        "Phones": ["Phone Case", "Charger", "Screen Protector"],
        "Cameras": ["Action Camera", "Tripod", "Memory Card"],
    },
    "Garden": {
        "Plants": ["Seed Pack", "Flower Bulbs", "Potting Soil"],
        "Tools": ["Pruning Shears", "Garden Hose", "Trowel", "Rake"],
        "Outdoor Living": ["Patio Chair", "Parasol", "Fire Pit"],
    },
    "Toys": {
        "Building": ["Brick Set", "Magnetic Tiles", "Wooden Blocks"],
        "Games": ["Board Game", "Card Game", "Jigsaw Puzzle"],
        "Outdoor Play": ["Water Pistol", "Kite", "Scooter"],
    },
}

#: department -> (brands, adjectives, variants) used to write titles.
WORDS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "Beauty": (
        ["Lumiera", "Velvessa", "Oak & Rose", "Pure Petal", "Glowly", "Maison Iris"],
        ["hydrating", "matte", "radiant", "gentle", "vegan", "nourishing", "long-lasting", "sheer"],
        ["50 ml", "travel size", "rose", "coral", "spf 30", "unscented", "2-pack", "deluxe"],
    ),
    "Sports": (
        ["Stridewell", "Peakform", "TrailMark", "Corevo", "Apex Line", "Northpace"],
        ["lightweight", "breathable", "waterproof", "padded", "reflective", "compact", "pro"],
        ["size M", "size L", "black", "neon yellow", "2-person", "adjustable", "10 kg"],
    ),
    "Kitchen": (
        ["Copperleaf", "Kitchenry", "Cast & Co", "Mesa Home", "Brewhaus", "Nordal"],
        ["non-stick", "stainless", "ceramic", "stackable", "dishwasher-safe", "cast iron"],
        ["24 cm", "1.5 l", "set of 4", "matte white", "sage green", "800 w"],
    ),
    "Electronics": (
        ["Voltic", "Sonora", "Pixelon", "Zenwire", "Arclight", "Nimbus Tech"],
        ["wireless", "noise-cancelling", "fast-charging", "ultra-slim", "4k", "ergonomic"],
        ["usb-c", "64 gb", "black", "silver", "27 inch", "bluetooth 5.3"],
    ),
    "Garden": (
        ["Greenthumb", "Fernway", "Meadowcraft", "Terra Nova", "Bloomfield"],
        ["organic", "heavy-duty", "weatherproof", "foldable", "heirloom", "rust-free"],
        ["20 l", "15 m", "pack of 50", "teak", "anthracite", "perennial mix"],
    ),
    "Toys": (
        ["Playnest", "Brickwise", "Kidora", "Funforge", "Little Atlas"],
        ["colourful", "educational", "classic", "magnetic", "family", "giant"],
        ["100 pieces", "ages 3+", "ages 8+", "2-4 players", "deluxe edition", "starter set"],
    ),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and behaviour of the synthetic shop (``--source synthetic:key=val,...`` on the CLI)."""

    n_items: int = 3000
    n_users: int = 4000
    #: how many departments of TAXONOMY to use (1..6)
    departments: int = 6
    #: every user has at least this many interactions; the rest is geometric with this mean
    min_seq_len: int = 5
    mean_extra_len: float = 6.0
    #: where the next item comes from, relative to the last one: same product type, a sibling type in
    #: the same subcategory, another type in the same department; otherwise back to a long-term interest
    p_same_leaf: float = 0.45
    p_same_subcategory: float = 0.25
    p_same_department: float = 0.1
    #: chance that a jump lands on a random product type and makes it a new long-term interest
    drift: float = 0.15
    #: Zipf exponent of item popularity inside a product type
    popularity_exponent: float = 1.0
    #: share of items whose category path lacks the product type (tag level 3 becomes <unknown>)
    short_path_fraction: float = 0.03
    #: share of items without a brand
    no_brand_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_items < 10 or self.n_users < 1:
            raise ConfigError("synthetic: need n_items >= 10 and n_users >= 1")
        if not 1 <= self.departments <= len(TAXONOMY):
            raise ConfigError(f"synthetic: departments must be in 1..{len(TAXONOMY)}, got {self.departments}")
        if self.min_seq_len < 3:
            raise ConfigError("synthetic: min_seq_len must be >= 3 (leave-one-out needs train/valid/test)")
        moves = self.p_same_leaf + self.p_same_subcategory + self.p_same_department
        probabilities = (
            self.p_same_leaf,
            self.p_same_subcategory,
            self.p_same_department,
            self.drift,
            self.short_path_fraction,
            self.no_brand_fraction,
        )
        if min(probabilities) < 0 or moves > 1 or max(probabilities) > 1:
            raise ConfigError("synthetic: probabilities must be in [0, 1] and p_same_* must sum to <= 1")
        if self.mean_extra_len < 0 or self.popularity_exponent < 0:
            raise ConfigError("synthetic: mean_extra_len and popularity_exponent must be >= 0")


def generate_raw(config: SyntheticConfig) -> RawData:
    """Items and interactions in the form every reader returns."""
    rng = np.random.default_rng(config.seed)
    leaves = [
        (dept, sub, leaf)
        for dept in list(TAXONOMY)[: config.departments]
        for sub, types in TAXONOMY[dept].items()
        for leaf in types
    ]
    n_leaves = len(leaves)

    # Items: product types get uneven shares of the catalogue (some fall under the tag threshold).
    leaf_share = rng.dirichlet(np.full(n_leaves, 8.0))  # (n_leaves,)
    item_leaf = rng.choice(n_leaves, size=config.n_items, p=leaf_share)  # (n_items,)
    items = []
    for index, leaf_index in enumerate(item_leaf):
        dept, sub, leaf = leaves[leaf_index]
        brands, adjectives, variants = WORDS[dept]
        brand = None if rng.random() < config.no_brand_fraction else str(rng.choice(brands))
        title = f"{rng.choice(adjectives)} {leaf.lower()} {rng.choice(variants)}"
        path = (ROOT, dept, sub) if rng.random() < config.short_path_fraction else (ROOT, dept, sub, leaf)
        items.append(Item(item_id=f"SYN{index:06d}", title=title, brand=brand, category_path=path))

    # Popularity inside each product type: Zipf over a random ranking of its items.
    members = [np.flatnonzero(item_leaf == leaf) for leaf in range(n_leaves)]
    weights = []
    for group in members:
        w = 1.0 / np.arange(1, len(group) + 1) ** config.popularity_exponent
        weights.append(rng.permutation(w) / w.sum())
    populated = np.array([len(group) > 0 for group in members])
    same_sub = [
        [j for j in range(n_leaves) if populated[j] and leaves[j][:2] == leaves[i][:2]]
        for i in range(n_leaves)
    ]
    same_dept = [
        [j for j in range(n_leaves) if populated[j] and leaves[j][0] == leaves[i][0]] for i in range(n_leaves)
    ]
    leaf_p = np.where(populated, leaf_share, 0.0)
    leaf_p /= leaf_p.sum()

    cut_sub = config.p_same_leaf + config.p_same_subcategory
    cut_dept = cut_sub + config.p_same_department
    users: list[str] = []
    item_ids: list[str] = []
    timestamps: list[int] = []
    start = 1_577_836_800  # 2020-01-01, whole days like the Amazon data
    for user in range(config.n_users):
        interests = list(rng.choice(n_leaves, size=2, p=leaf_p))
        leaf = interests[0]
        length = config.min_seq_len + rng.geometric(1.0 / (1.0 + config.mean_extra_len)) - 1
        day = int(rng.integers(0, 1000))
        previous = -1
        for _ in range(length):
            group = members[leaf]
            item = int(group[rng.choice(len(group), p=weights[leaf])])
            if item == previous:  # the same item twice in a row is rare in shops: draw once more
                item = int(group[rng.choice(len(group), p=weights[leaf])])
            users.append(f"U{user:06d}")
            item_ids.append(items[item].item_id)
            timestamps.append(start + day * 86_400)
            previous = item
            day += int(rng.integers(0, 20))
            move = rng.random()
            if move < config.p_same_leaf:
                continue
            if move < cut_sub:
                leaf = int(rng.choice(same_sub[leaf]))
            elif move < cut_dept:
                leaf = int(rng.choice(same_dept[leaf]))
            elif rng.random() < config.drift:
                leaf = int(rng.choice(n_leaves, p=leaf_p))
                interests[int(rng.integers(len(interests)))] = leaf
            else:
                leaf = int(rng.choice(interests))
    return RawData(items=items, users=users, item_ids=item_ids, timestamps=timestamps)


def generate(config: SyntheticConfig | None = None, options: BuildOptions | None = None) -> Dataset:
    """The synthetic shop as a canonical dataset."""
    dataset, _ = build_dataset(generate_raw(config or SyntheticConfig()), options or BuildOptions())
    return dataset
