"""Generate the SEO corpus shipped with seo_dist (deterministic: same seed, same bytes).

Each record is one web page: its title, target keywords and a page summary, and the meta
description an SEO writer would give it. The records are composed from hand-written vocabularies
of page types, products, services, places and phrasing, so that a small model has real structure to
learn (keywords reappear in the description, page types have their own style) without any download.

Regenerate with ``python -m seo_dist.data.make_corpus`` (writes ``corpus/seo_corpus.jsonl.gz``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

CORPUS_PATH = Path(__file__).with_name("corpus") / "seo_corpus.jsonl.gz"

BRANDS = [
    "Northwind",
    "Bluepeak",
    "Evergreen",
    "Solace",
    "Brightline",
    "Oakridge",
    "Lumen",
    "Harbor & Co",
    "Trailhead",
    "Copperleaf",
    "Nimbus",
    "Silverfern",
    "Redwood",
    "Kinfolk",
    "Atlas",
    "Meadowlark",
]
CITIES = [
    "Austin",
    "Denver",
    "Portland",
    "Chicago",
    "Seattle",
    "Boston",
    "Atlanta",
    "Phoenix",
    "Nashville",
    "San Diego",
    "Minneapolis",
    "Raleigh",
    "Tampa",
    "Salt Lake City",
    "Pittsburgh",
    "Sacramento",
]
PRODUCTS = {
    "running shoes": ["lightweight", "cushioned", "trail", "waterproof", "wide-fit"],
    "espresso machine": ["compact", "dual-boiler", "manual", "automatic", "stainless steel"],
    "standing desk": ["electric", "bamboo", "L-shaped", "height-adjustable", "quiet"],
    "yoga mat": ["non-slip", "eco-friendly", "extra-thick", "travel", "cork"],
    "backpack": ["hiking", "laptop", "anti-theft", "rolltop", "carry-on"],
    "air purifier": ["HEPA", "quiet", "smart", "large-room", "allergy"],
    "office chair": ["ergonomic", "mesh", "lumbar-support", "gaming", "leather"],
    "water bottle": ["insulated", "glass", "collapsible", "filtered", "leak-proof"],
    "headphones": ["noise-cancelling", "wireless", "over-ear", "open-back", "sport"],
    "skincare serum": ["vitamin C", "hyaluronic", "retinol", "fragrance-free", "organic"],
    "dog bed": ["orthopedic", "washable", "calming", "chew-resistant", "outdoor"],
    "camping tent": ["2-person", "ultralight", "family", "4-season", "pop-up"],
}
SERVICES = {
    "plumber": ["emergency repairs", "water heater installation", "drain cleaning", "leak detection"],
    "dentist": ["teeth whitening", "dental implants", "family dentistry", "emergency dental care"],
    "roofing contractor": ["roof replacement", "storm damage repair", "gutter installation", "free inspections"],
    "accountant": ["tax preparation", "small business bookkeeping", "payroll services", "IRS audits"],
    "wedding photographer": ["engagement sessions", "destination weddings", "photo albums", "drone photos"],
    "personal trainer": ["weight loss programs", "strength training", "nutrition coaching", "online sessions"],
    "moving company": ["local moves", "long-distance moving", "packing services", "storage units"],
    "veterinarian": ["pet vaccinations", "dental cleaning", "emergency vet care", "wellness exams"],
}
TOPICS = {
    "email marketing": ["open rates", "subject lines", "segmentation", "automation"],
    "home composting": ["kitchen scraps", "worm bins", "brown and green materials", "odor control"],
    "remote work": ["home office setup", "async communication", "time zones", "focus"],
    "sourdough baking": ["starter", "hydration", "scoring", "proofing times"],
    "personal budgeting": ["50/30/20 rule", "emergency fund", "debt snowball", "tracking expenses"],
    "technical SEO": ["crawl budget", "canonical tags", "site speed", "structured data"],
    "indoor plants": ["low light", "watering schedule", "repotting", "pet-safe plants"],
    "marathon training": ["long runs", "tapering", "fueling", "recovery"],
    "cybersecurity basics": ["password managers", "two-factor authentication", "phishing", "backups"],
    "electric cars": ["charging at home", "range", "tax credits", "battery life"],
}
SOFTWARE = {
    "project management software": ["Gantt charts", "kanban boards", "time tracking", "team workload"],
    "CRM": ["pipeline tracking", "email integration", "lead scoring", "sales forecasting"],
    "invoicing app": ["recurring invoices", "online payments", "expense tracking", "multi-currency"],
    "website builder": ["drag-and-drop editor", "templates", "ecommerce", "SEO tools"],
    "password manager": ["autofill", "shared vaults", "breach alerts", "passkeys"],
}
RECIPES = {
    "banana bread": ["ripe bananas", "brown butter", "walnuts", "one bowl"],
    "chicken curry": ["coconut milk", "garam masala", "30 minutes", "mild"],
    "vegan chili": ["black beans", "smoked paprika", "one pot", "high protein"],
    "lemon pasta": ["parmesan", "garlic", "15 minutes", "weeknight"],
    "overnight oats": ["chia seeds", "meal prep", "no cook", "berries"],
}
AUDIENCES = [
    "beginners",
    "busy parents",
    "small businesses",
    "runners",
    "students",
    "remote teams",
    "homeowners",
    "first-time buyers",
    "pet owners",
    "travelers",
]
CTAS = [
    "Shop now",
    "Order today",
    "Book a free consultation",
    "Read the full guide",
    "Start your free trial",
    "Get the recipe",
    "Call today",
    "Compare plans",
    "Learn more",
    "See today's deals",
]
BENEFITS = [
    "free shipping",
    "a 30-day return policy",
    "a lifetime warranty",
    "same-day service",
    "licensed and insured experts",
    "5-star reviews",
    "transparent pricing",
    "24/7 support",
]


def _cap(s: str) -> str:
    """Title-case each word, keeping words that already have capitals (``HEPA``, ``CRM``)."""
    return " ".join(w if any(c.isupper() for c in w) else w[:1].upper() + w[1:] for w in s.split(" "))


def product_page(r: random.Random) -> dict:
    product, adjs = r.choice(list(PRODUCTS.items()))
    adj, brand, benefit, cta = r.choice(adjs), r.choice(BRANDS), r.choice(BENEFITS), r.choice(CTAS[:2] + CTAS[-1:])
    audience = r.choice(AUDIENCES)
    title = f"{brand} {_cap(adj)} {_cap(product)} | {brand}"
    keywords = [f"{adj} {product}", f"best {product}", f"{product} for {audience}", brand.lower()]
    summary = (
        f"Product page for the {brand} {adj} {product}. Designed for {audience}, it comes with {benefit}. "
        f"The page lists sizes, materials, customer reviews and a comparison with other {product}s."
    )
    meta = (
        f"Discover the {brand} {adj} {product}, built for {audience}. Enjoy {benefit} and real customer reviews. {cta}."
    )
    return {"page_type": "product", "title": title, "keywords": keywords, "summary": summary, "meta_description": meta}


def local_service_page(r: random.Random) -> dict:
    service, offers = r.choice(list(SERVICES.items()))
    city, brand, benefit = r.choice(CITIES), r.choice(BRANDS), r.choice(BENEFITS)
    a, b = r.sample(offers, 2)
    years = r.randint(3, 40)
    title = f"{_cap(service)} in {city} | {brand} {_cap(service.split()[-1])}s"
    keywords = [f"{service} {city}", f"{service} near me", a, b]
    summary = (
        f"Local {service} in {city} with {years} years of experience. Services include {a} and {b}. "
        f"The page has service areas, pricing, {benefit} and a booking form."
    )
    meta = (
        f"Looking for a trusted {service} in {city}? {brand} offers {a} and {b} with {benefit}. "
        f"{r.choice(['Call today', 'Book online', 'Get a free quote'])}."
    )
    return {
        "page_type": "local_service",
        "title": title,
        "keywords": keywords,
        "summary": summary,
        "meta_description": meta,
    }


def blog_page(r: random.Random) -> dict:
    topic, subs = r.choice(list(TOPICS.items()))
    audience = r.choice(AUDIENCES)
    n = r.choice([5, 7, 10, 12, 15])
    a, b, c = r.sample(subs, 3)
    year = r.choice([2024, 2025, 2026])
    kind = r.choice(["guide", "tips", "mistakes", "checklist"])
    if kind == "guide":
        title = f"The Complete Guide to {_cap(topic)} for {_cap(audience)} ({year})"
        meta = f"Everything {audience} need to know about {topic}: {a}, {b} and {c}, explained step by step."
    elif kind == "tips":
        title = f"{n} {_cap(topic)} Tips for {_cap(audience)}"
        meta = f"{n} practical {topic} tips for {audience}, from {a} to {c}. Start improving today."
    elif kind == "mistakes":
        title = f"{n} Common {_cap(topic)} Mistakes (and How to Avoid Them)"
        meta = f"Avoid the {n} most common {topic} mistakes. Learn how {audience} can get {a} and {b} right."
    else:
        title = f"{_cap(topic)} Checklist: {n} Steps for {_cap(audience)}"
        meta = f"Use this {n}-step {topic} checklist covering {a}, {b} and {c}. Free printable included."
    keywords = [topic, f"{topic} {kind}", a, b]
    summary = (
        f"A {kind} article about {topic} written for {audience}. Sections cover {a}, {b} and {c}, "
        f"with examples, a summary table and answers to frequent questions."
    )
    return {"page_type": "blog", "title": title, "keywords": keywords, "summary": summary, "meta_description": meta}


def software_page(r: random.Random) -> dict:
    software, feats = r.choice(list(SOFTWARE.items()))
    brand, audience = r.choice(BRANDS), r.choice(AUDIENCES)
    a, b = r.sample(feats, 2)
    trial = r.choice([7, 14, 30])
    title = f"{brand} - {_cap(software)} for {_cap(audience)}"
    keywords = [software, f"{software} for {audience}", a, f"{brand.lower()} {software.split()[0].lower()}"]
    summary = (
        f"Landing page for {brand}, a {software} for {audience}. Highlights {a} and {b}, "
        f"pricing tiers, integrations and a {trial}-day free trial."
    )
    meta = f"{brand} is the {software} {audience} love, with {a} and {b} built in. Try it free for {trial} days."
    return {"page_type": "software", "title": title, "keywords": keywords, "summary": summary, "meta_description": meta}


def recipe_page(r: random.Random) -> dict:
    dish, notes = r.choice(list(RECIPES.items()))
    a, b = r.sample(notes, 2)
    mins = r.choice([15, 20, 30, 45, 60, 75])
    serves = r.choice([2, 4, 6, 8])
    title = f"Easy {_cap(dish)} Recipe ({a.title()}, {mins} Minutes)"
    keywords = [f"{dish} recipe", f"easy {dish}", a, b]
    summary = (
        f"Recipe page for {dish} with {a} and {b}. Ready in {mins} minutes, serves {serves}. "
        f"Includes ingredients, step-by-step photos and nutrition facts."
    )
    meta = f"Make this easy {dish} with {a} and {b} in just {mins} minutes. Serves {serves}. Get the recipe."
    return {"page_type": "recipe", "title": title, "keywords": keywords, "summary": summary, "meta_description": meta}


def category_page(r: random.Random) -> dict:
    product, adjs = r.choice(list(PRODUCTS.items()))
    brand, benefit = r.choice(BRANDS), r.choice(BENEFITS)
    count = r.choice([24, 36, 48, 60, 120])
    a, b = r.sample(adjs, 2)
    title = f"Shop {_cap(product)}s: {_cap(a)}, {_cap(b)} & More | {brand}"
    keywords = [f"{product}s", f"{a} {product}", f"{b} {product}", f"buy {product} online"]
    summary = (
        f"Category page listing {count} {product}s from {brand}, with filters for {a} and {b} models, "
        f"price sorting, and {benefit}."
    )
    meta = f"Browse {count}+ {product}s at {brand}, from {a} to {b} styles. {_cap(benefit)}. Shop now."
    return {"page_type": "category", "title": title, "keywords": keywords, "summary": summary, "meta_description": meta}


PAGE_BUILDERS = [product_page, local_service_page, blog_page, software_page, recipe_page, category_page]


def generate(num_records: int = 4000, seed: int = 20261127) -> list[dict]:
    r = random.Random(seed)
    records = []
    for i in range(num_records):
        rec = r.choice(PAGE_BUILDERS)(r)
        records.append({"id": f"page-{i:05d}", **rec})
    return records


def write(records: list[dict], path: Path = CORPUS_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records).encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(payload)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-records", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--out", type=Path, default=CORPUS_PATH)
    args = parser.parse_args()
    write(generate(args.num_records, args.seed), args.out)
    print(f"wrote {args.num_records} records to {args.out}")


if __name__ == "__main__":
    main()
