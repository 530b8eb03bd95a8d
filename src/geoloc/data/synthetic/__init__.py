"""`geoloc synth`: a synthetic city dataset in the exact layout and naming of SF-XS/Tokyo-XS.

Two procedurally generated cities: an SF-like one (wide streets, colourful facades of 2-8
floors, window grids, shop fronts) and a Tokyo-like one (other street grid, grey tiles and
glass, taller and narrower buildings, ribbon windows, many vertical signs). A city is a 2-D
map of rectangular building footprints on an irregular street grid; each footprint edge is a
facade whose texture is a deterministic function of the building and of the position along
the facade (window bays, floors, doors, signs), so it is anchored in world coordinates. An
image is rendered by casting one ray per column from a camera standing on a street; walls
are drawn with height proportional to 1/distance (true parallax) and the K nearest walls of
a column are layered, so taller buildings show above nearer ones. What a camera sees
therefore depends on where it stands and where it looks, which is what a geo-localization
model has to learn.

Database images are panoramas cut into evenly spaced headings, taken in steady daylight.
Queries stand a few metres along the street from a database view, turned up to 10 degrees,
under other conditions: sun direction, exposure, tint, gamma, haze, clouds, passing cars,
sensor noise. Training images are taken along the streets of an area disjoint from val and
test, at all hours (TRAIN_MIX). Tokyo-XS queries are the same places at day, sunset and
night (like Tokyo 24/7); Tokyo-Night is the night third: dark sky with city glow, lit
windows, glowing signs and street light on the lower floors, so the layout stays visible.

Everything is drawn from numpy Generators seeded from the seed, one per image, so the same
seed gives byte-identical files whatever the number of worker processes.
"""
