#!/usr/bin/env python3
"""The module graph of the swapkit runtime crate (crates/swapkit/src), by top-level module,
and a check that it has no cycles: each line says what a module uses. Run by scripts/test.sh;
fails (exit 1) on a cycle. Comments, string literals and unit tests are not counted."""
import re,os,collections,sys
os.chdir(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), '../crates/swapkit/src'))
deps=collections.defaultdict(set)
mods=[m.replace('.rs','') for m in os.listdir('.') if m not in('lib.rs','docs')]
for root,_,files in os.walk('.'):
    for f in files:
        if not f.endswith('.rs'): continue
        p=os.path.join(root,f)[2:]
        top=p.split('/')[0].replace('.rs','')
        if top in ('lib','docs'): continue
        code='\n'.join(l for l in open(p).read().split('\n') if not l.strip().startswith('//'))
        code=re.sub(r'mod tests \{.*','',code,flags=re.S)
        code=re.sub(r'"(?:[^"\\]|\\.)*"','""',code,flags=re.S)
        for t in re.findall(r'crate::([a-z_]+)',code)+[x for m in re.findall(r'crate::\{([^}]*)\}',code) for x in re.findall(r'\b([a-z_]+)\b',m)]:
            if t!=top and t in mods: deps[top].add(t)
        if re.search(r'\bSwapper\b',code) and top!='swapper': deps[top].add('swapper')
        if re.search(r'\bVault\b',code) and top!='vault': deps[top].add('vault')
for k in sorted(deps): print(f"{k:10} -> {' '.join(sorted(deps[k]))}")
# Tarjan SCC
idx={};low={};st=[];on=set();sccs=[];i=[0]
def sc(v):
    idx[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
    for w in deps.get(v,()):
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        c=[]
        while True:
            w=st.pop();on.discard(w);c.append(w)
            if w==v:break
        if len(c)>1: sccs.append(c)
for v in list(deps): 
    if v not in idx: sc(v)
if sccs:
    print('cycles between modules:', sccs)
    sys.exit(1)
print('no cycles')
