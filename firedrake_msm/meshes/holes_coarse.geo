// The coarse mesh of holes.geo.
h = 0.125;
Include "holes.geo";
