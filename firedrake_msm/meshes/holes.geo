// A channel [0, 2] x [0, 1] with two circular holes, for the demo of a PDE of one's own
// (demos/your_own_pde.py). Included by holes_fine.geo and holes_coarse.geo, which set the
// mesh size h. Physical names: inlet (x = 0), outlet (x = 2), walls (y = 0, 1), holes, fluid.
SetFactory("OpenCASCADE");
Rectangle(1) = {0, 0, 0, 2, 1};
Disk(2) = {0.6, 0.55, 0, 0.15};
Disk(3) = {1.3, 0.4, 0, 0.12};
BooleanDifference(4) = {Surface{1}; Delete;}{Surface{2, 3}; Delete;};
eps = 1e-6;
inlet() = Curve In BoundingBox{-eps, -eps, -eps, eps, 1 + eps, eps};
outlet() = Curve In BoundingBox{2 - eps, -eps, -eps, 2 + eps, 1 + eps, eps};
bottom() = Curve In BoundingBox{-eps, -eps, -eps, 2 + eps, eps, eps};
top() = Curve In BoundingBox{-eps, 1 - eps, -eps, 2 + eps, 1 + eps, eps};
all() = Curve{:};
holes() = all();
holes() -= {inlet(), outlet(), bottom(), top()};
Physical Curve("inlet", 1) = {inlet()};
Physical Curve("outlet", 2) = {outlet()};
Physical Curve("walls", 3) = {bottom(), top()};
Physical Curve("holes", 4) = {holes()};
Physical Surface("fluid", 5) = {4};
Mesh.CharacteristicLengthMin = h;
Mesh.CharacteristicLengthMax = h;
