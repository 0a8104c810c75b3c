"""Names, number plates and shop catalogues of the synthetic city (``loadtest.city``).

Data only: the tenants', people's and shops' names the generator draws from (South African,
mostly township, names), mobile prefixes and plate letters, and the two catalogues a shop
stocks from - a spaza shop's groceries and a takeaway's kota and bunny chow - with prices,
which items need a cold chain, and how often each is bought (``popularity``, relative).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FIRST_NAMES", "LAST_NAMES", "MOBILE_PREFIXES", "PLATE_LETTERS", "POPULARITY", "SPAZA_CATALOGUE",
           "SPAZA_NAMES", "TAKEAWAY_CATALOGUE", "TAKEAWAY_NAMES", "TENANT_NAMES", "TITLES", "Item"]

TENANT_NAMES = ("Soweto Spaza Co-op", "Kasi Express", "Alex Corner Deliveries",
                 "Jozi Township Foods", "Ekasi Runners", "Mzansi Spaza Network")
FIRST_NAMES = (
    "Thandeka", "Sipho", "Lerato", "Mpho", "Bongani", "Nomvula", "Tshepo", "Zanele", "Kagiso",
    "Themba", "Lindiwe", "Sibusiso", "Palesa", "Karabo", "Nhlanhla", "Refilwe", "Lwazi", "Ayanda",
    "Thabo", "Nandi", "Mandla", "Busisiwe", "Katlego", "Dineo", "Vusi", "Precious", "Tebogo",
    "Sizwe", "Naledi", "Kabelo", "Andile", "Lebohang", "Xolani", "Zodwa", "Musa", "Nokuthula",
    "Sello", "Gugu", "Siyabonga", "Khanyisile", "Tumelo", "Boitumelo", "Nkosinathi", "Ntombi",
    "Fatima", "Priya", "Ruan", "Chantelle", "Tendai", "Blessing",
)
LAST_NAMES = (
    "Mokoena", "Dlamini", "Nkosi", "Khumalo", "Ndlovu", "Mahlangu", "Mabaso", "Zulu", "Sithole",
    "Molefe", "Mthembu", "Ngcobo", "Shabalala", "Radebe", "Buthelezi", "Mofokeng", "Tshabalala",
    "Maseko", "Nkuna", "Baloyi", "Maluleke", "Mathebula", "Masilela", "Motaung", "Modise",
    "Sibiya", "Cele", "Hadebe", "Ntuli", "Mazibuko", "Moloi", "Sekgobela", "Naidoo", "Pillay",
    "Petersen", "Adams", "Botha", "van der Merwe", "Moyo", "Chauke",
)
TITLES = ("Mama", "Bra", "Sis", "Aunty", "Uncle", "Gogo", "Ntate", "Mme")
SPAZA_NAMES = ("{title} {last} Spaza", "{first}'s Tuckshop", "Kwa-{last} Superette",
                "{suburb} Corner Shop", "{first}'s General Dealer", "{last} Spaza")
TAKEAWAY_NAMES = ("{first}'s Kota Corner", "Ekasi Kota King {suburb}", "{suburb} Bunny Chow",
                   "Chesa Nyama kwa-{last}", "{title} {last}'s Kitchen")
MOBILE_PREFIXES = ("60", "61", "62", "63", "64", "65", "66", "67", "68", "71", "72", "73",
                    "74", "76", "78", "79", "81", "82", "83", "84")
# South African plates leave out vowels (no words) and Q.
PLATE_LETTERS = "BCDFGHJKLMNPRSTVWXYZ"


@dataclass(frozen=True)
class Item:
    sku: str
    name: str
    description: str
    price_cents: int
    cold: bool
    popularity: float


COLD_DRINK_2L = Item("COLDDRINK-2L", "Cold drink 2 L", "Cola, ice cold", 2499, False, 3.0)
COLD_DRINK_CAN = Item("COLDDRINK-330", "Cold drink can 330 ml", "Assorted flavours, ice cold",
                        1199, False, 3.0)
SPAZA_CATALOGUE = (
    Item("BREAD-WHITE-700", "White bread 700 g", "Sliced white loaf, baked this morning", 1899, False, 5.0),
    Item("BREAD-BROWN-700", "Brown bread 700 g", "Sliced brown loaf, baked this morning", 1750, False, 5.0),
    Item("MILK-FULL-1L", "Fresh full-cream milk 1 L", "Keep refrigerated", 2199, False, 4.0),
    Item("AMASI-2L", "Amasi (maas) 2 L", "Fermented milk, keep refrigerated", 4299, False, 2.0),
    Item("MAIZE-5KG", "Super maize meal 5 kg", "For pap: stiff, soft or phutu", 7499, False, 3.0),
    Item("MAIZE-2.5KG", "Super maize meal 2.5 kg", "For pap: stiff, soft or phutu", 4199, False, 2.0),
    Item("SUGAR-2KG", "White sugar 2 kg", "Granulated white sugar", 4499, False, 2.5),
    Item("EGGS-6", "Large eggs, 6", "Free-range large eggs", 2499, False, 2.5),
    Item("EGGS-18", "Large eggs, 18", "Large eggs, tray of 18", 6499, False, 1.0),
    COLD_DRINK_2L,
    COLD_DRINK_CAN,
    Item("PARAFFIN-1L", "Paraffin 1 L", "Illuminating paraffin for stoves and heaters", 2999, False, 1.5),
    Item("CHICKEN-2KG", "Frozen chicken pieces 2 kg", "Mixed portions, keep frozen", 8999, True, 2.0),
    Item("POLONY-1KG", "Polony 1 kg", "Keep refrigerated", 4499, False, 1.5),
    Item("RICE-2KG", "Long-grain rice 2 kg", "Parboiled long-grain rice", 4299, False, 1.5),
    Item("OIL-2L", "Sunflower oil 2 L", "Cooking oil", 6499, False, 1.5),
    Item("TEA-100", "Rooibos tea, 100 bags", "Rooibos tea bags", 4499, False, 1.0),
    Item("CANDLES-6", "Household candles, 6", "For load shedding", 2999, False, 1.5),
    Item("SOAP-175G", "Bath soap 175 g", "Bar soap", 1599, False, 1.0),
    Item("WASHING-2KG", "Washing powder 2 kg", "Hand-wash washing powder", 7999, False, 1.0),
    Item("BEANS-410G", "Baked beans 410 g", "Baked beans in tomato sauce", 1799, False, 1.5),
    Item("PILCHARDS-400G", "Pilchards in tomato sauce 400 g", "Tinned pilchards", 2999, False, 1.5),
    Item("CHAKALAKA-410G", "Chakalaka 410 g", "Spicy vegetable relish", 1999, False, 1.0),
    Item("CHIPS-125G", "Maize chips 125 g", "Cheese-flavoured maize snacks", 1899, False, 2.0),
)
TAKEAWAY_CATALOGUE = (
    Item("KOTA-QUARTER", "Kota, quarter loaf", "Chips, polony, atchar and cheese in a quarter loaf", 4500, False, 5.0),
    Item("KOTA-FULLHOUSE", "Full house kota", "Chips, russian, egg, cheese, polony and atchar", 7500, False, 3.0),
    Item("BUNNY-QUARTER", "Beef bunny chow, quarter", "Beef curry in a quarter loaf", 6500, False, 3.0),
    Item("VETKOEK-MINCE", "Vetkoek with mince", "Fried dough bun with curried mince", 2500, False, 2.5),
    Item("AMAGWINYA-4", "Amagwinya, 4", "Plain vetkoek, four", 1200, False, 2.0),
    Item("CHIPS-LARGE", "Slap chips, large", "Vinegar and chip spice", 3500, False, 3.0),
    Item("RUSSIAN-CHIPS", "Russian and chips", "Russian sausage with slap chips", 4000, False, 2.5),
    Item("PAP-WORS", "Pap and wors", "Boerewors with pap and chakalaka", 5500, False, 2.0),
    Item("WINGS-6", "Chicken wings, 6", "Flame-grilled wings", 5000, False, 2.0),
    COLD_DRINK_2L,
    COLD_DRINK_CAN,
)

POPULARITY = {i.sku: i.popularity for i in (*SPAZA_CATALOGUE, *TAKEAWAY_CATALOGUE)}
