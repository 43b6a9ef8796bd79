# A closure of many small store paths for the `nix copy` benchmark, built without
# nixpkgs: one leaf per listed system file (a copy of it), one group path per
# `groupSize` leaves that links to them (so the closure has references), and a top
# path that names every group.
#
#   nix-build bench/closure.nix --store DIR --argstr filesJson /abs/files.json \
#     --argstr salt SOMETHING --no-out-link
{ filesJson, salt, groupSize ? 20 }:
let
  files = builtins.fromJSON (builtins.readFile filesJson);
  n = builtins.length files;
  mk = name: script: builtins.derivation {
    inherit name salt;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  };
  leaves = builtins.genList
    (i: mk "leaf-${toString i}" "cp '${builtins.elemAt files i}' $out")
    n;
  groupCount = (n + groupSize - 1) / groupSize;
  group = g:
    let
      left = n - g * groupSize;
      size = if left < groupSize then left else groupSize;
      links = builtins.genList
        (j: "ln -s ${builtins.elemAt leaves (g * groupSize + j)} l${toString j}")
        size;
    in
    mk "group-${toString g}" ("mkdir $out && cd $out && " + builtins.concatStringsSep " && " links);
  groups = builtins.genList group groupCount;
in
mk "top" ("mkdir $out && echo " + builtins.concatStringsSep " " (map toString groups) + " > $out/groups")
