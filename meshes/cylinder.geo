// Channel flow past a cylinder (the Schaefer-Turek geometry: 2.2 x 0.41, cylinder of radius 0.05
// centred at (0.2, 0.2)). Mesh size h far away, h/hc on the cylinder.
//   gmsh -2 -format msh41 -setnumber h 0.1 -o cylinder_coarse.msh cylinder.geo
//   gmsh -2 -format msh41 -setnumber h 0.03 -o cylinder_fine.msh cylinder.geo
DefineConstant[ h = {0.1, Name "mesh size"}, hc = {4, Name "refinement on the cylinder"} ];
L = 2.2; H = 0.41; xc = 0.2; yc = 0.2; r = 0.05;
Point(1) = {0, 0, 0, h};
Point(2) = {L, 0, 0, h};
Point(3) = {L, H, 0, h};
Point(4) = {0, H, 0, h};
Point(5) = {xc, yc, 0, h/hc};
Point(6) = {xc + r, yc, 0, h/hc};
Point(7) = {xc, yc + r, 0, h/hc};
Point(8) = {xc - r, yc, 0, h/hc};
Point(9) = {xc, yc - r, 0, h/hc};
Line(1) = {1, 2};
Line(2) = {2, 3};
Line(3) = {3, 4};
Line(4) = {4, 1};
Circle(5) = {6, 5, 7};
Circle(6) = {7, 5, 8};
Circle(7) = {8, 5, 9};
Circle(8) = {9, 5, 6};
Curve Loop(1) = {1, 2, 3, 4};
Curve Loop(2) = {5, 6, 7, 8};
Plane Surface(1) = {1, 2};
Physical Curve("inlet", 1) = {4};
Physical Curve("outlet", 2) = {2};
Physical Curve("walls", 3) = {1, 3};
Physical Curve("cylinder", 4) = {5, 6, 7, 8};
Physical Surface("fluid", 5) = {1};
