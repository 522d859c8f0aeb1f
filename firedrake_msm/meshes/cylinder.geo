// Flow past a cylinder of diameter D = 0.1 centred at the origin, in a wide box: 10 D upstream,
// 22 D downstream, 18 D across (blockage D/H = 0.056). Mesh size h in the near wake, h/hc on the
// cylinder, growing downstream and away from the wake up to hf*h in the far field.
//   gmsh -2 -format msh41 -setnumber h 0.08 -setnumber hc 4 -o cylinder_coarse.msh cylinder.geo
//   gmsh -2 -format msh41 -setnumber h 0.03 -setnumber hc 6 -o cylinder_fine.msh cylinder.geo
DefineConstant[ h = {0.08, Name "near-wake mesh size"}, hc = {4, Name "refinement on the cylinder"},
                hf = {5, Name "far-field coarsening"} ];
r = 0.05; xu = -1.0; xd = 2.2; H = 0.9;
Point(1) = {xu, -H, 0};
Point(2) = {xd, -H, 0};
Point(3) = {xd, H, 0};
Point(4) = {xu, H, 0};
Point(5) = {0, 0, 0};
Point(6) = {r, 0, 0};
Point(7) = {0, r, 0};
Point(8) = {-r, 0, 0};
Point(9) = {0, -r, 0};
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

// h/hc on the cylinder, growing linearly with the distance from it.
Field[1] = Distance;
Field[1].CurvesList = {5, 6, 7, 8};
Field[1].Sampling = 200;
Field[2] = Threshold;
Field[2].InField = 1;
Field[2].SizeMin = h / hc;
Field[2].SizeMax = hf * h;
Field[2].DistMin = 0;
Field[2].DistMax = 0.15 * hf;
// The wake: h behind the cylinder, growing to 1.9 h at the outlet, in a band |y| < 2 D + 0.12 x that
// widens downstream; outside it the size grows with the distance to the band, up to hf h.
Field[3] = MathEval;
Field[3].F = Sprintf("%g * (1 + 0.4 * max(x, 0)) + 0.4 * (max(abs(y) - 0.2 - 0.12 * max(x, 0), 0) + max(-0.1 - x, 0))", h);
Field[4] = Min;
Field[4].FieldsList = {2, 3};
Field[5] = MathEval;
Field[5].F = Sprintf("%g + 0 * x", hf * h);
Field[6] = Min;
Field[6].FieldsList = {4, 5};
Background Field = 6;
Mesh.MeshSizeExtendFromBoundary = 0;
Mesh.MeshSizeFromPoints = 0;
Mesh.MeshSizeFromCurvature = 0;
Mesh.Algorithm = 6;
