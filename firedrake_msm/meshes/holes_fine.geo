// The fine mesh of holes.geo.
h = 0.025;
Include "holes.geo";
